"""Task and worker events, broadcast on the broker for monitors.

What is sent
    Task events ``task-sent`` (by the client, with ``task_send_sent_event``),
    ``task-received``, ``task-started``, ``task-succeeded``, ``task-failed``,
    ``task-retried``, ``task-revoked`` (by the worker, with ``uuid``, ``name``,
    ``runtime``...) and worker events ``worker-online``, ``worker-heartbeat``
    (every ``HEARTBEAT_INTERVAL`` seconds: pool, load, active and processed
    counts) and ``worker-offline``. Each event is a JSON object with ``type``,
    ``hostname``, ``timestamp`` (Unix time) and ``pid``; field names follow
    Celery's so a Celery-minded reader finds what they expect.

How it is sent, and what it costs
    Events are off by default (``-E`` / ``worker_send_task_events``). When off,
    the worker's hot path pays one attribute check per task and nothing else: no
    event is built, serialized or sent. When on, :meth:`EventDispatcher.send`
    only appends a dict to a buffer under a lock; a background thread sends the
    buffer every ``flush_interval`` seconds as *one* broadcast holding a JSON
    list of events. So a worker running 5,000 tasks a second makes a handful of
    broadcasts a second rather than 15,000 (which matters on brokers where a
    broadcast is a database write, like SQLite). The price is up to
    ``flush_interval`` of delay before a monitor sees an event. Broadcasts are
    fire and forget: with nobody listening the broker drops them.

Receiving
    :class:`EventReceiver` subscribes to :data:`EVENT_CHANNEL` and yields single
    events; :class:`State` folds them into workers, tasks, counters and time
    series for the dashboard and ``/metrics``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from polyq import signals

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.transport import Delivery, Subscription

__all__ = [
    "EVENT_CHANNEL",
    "HEARTBEAT_INTERVAL",
    "EventDispatcher",
    "EventReceiver",
    "State",
    "TaskInfo",
    "WorkerInfo",
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
#: Repr of arguments in events is cut to this many characters.
ARG_REPR_LIMIT = 1024


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= ARG_REPR_LIMIT else text[: ARG_REPR_LIMIT - 3] + "..."


def message_fields(delivery: Delivery, accept: frozenset[str]) -> dict[str, Any]:
    """Event fields describing a task message: args and kwargs (as short reprs),
    retries, eta, expires, root and parent ids. Only called when events are on:
    it decodes the body, which the worker otherwise leaves to the pool."""
    from polyq.message import decode

    headers = delivery.headers
    fields: dict[str, Any] = {
        "queue": delivery.queue,
        "retries": int(headers.get("retries", 0) or 0),
        "eta": headers.get("eta") or None,
        "expires": headers.get("expires") or None,
        "root_id": headers.get("root_id") or None,
        "parent_id": headers.get("parent_id") or None,
    }
    try:
        if headers.get("content-type") == "application/json" and not headers.get("compression"):
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
        from polyq.transport import Delivery

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


class EventReceiver:
    """Listens to the events of every worker on ``app``'s broker.

    Subscribe first (:meth:`open`, or the context manager), then iterate::

        with EventReceiver(app) as receiver:
            for event in receiver.events(timeout=10):
                print(event["type"], event.get("uuid"))
    """

    def __init__(self, app: Polyq) -> None:
        self.app = app
        self._subscription: Subscription | None = None
        self._stop = threading.Event()

    def open(self) -> EventReceiver:
        """Subscribe now; events sent from this point on are not missed."""
        transport = self.app.transport
        if not transport.capabilities.broadcast:
            from polyq.exceptions import ConfigurationError

            raise ConfigurationError(
                f"broker {transport.describe()} cannot broadcast, so workers cannot send "
                "events; use a broker with broadcast (Redis, RabbitMQ, SQL, SQS)"
            )
        if self._subscription is None:
            self._subscription = transport.subscribe(EVENT_CHANNEL)
        return self

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield events until :meth:`close` (or ``timeout`` seconds pass)."""
        self.open()
        assert self._subscription is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            wait = 0.5
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            body = self._subscription.get(wait)
            if body is not None:
                yield from decode_events(body)

    def capture(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler`` with each event until :meth:`close`; a failing handler is logged."""
        for event in self.events():
            try:
                handler(event)
            except Exception:
                logger.exception("event handler failed on %s", event.get("type"))

    def close(self) -> None:
        """Stop iterating and unsubscribe; idempotent."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def __enter__(self) -> EventReceiver:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- state ----------------------------------------------------------------------

TASK_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
#: Order of states: an event that arrives late never moves a task backwards.
_STATE_RANK = {
    "PENDING": 0,
    "RECEIVED": 1,
    "STARTED": 2,
    "RETRY": 3,
    "SUCCESS": 4,
    "FAILURE": 4,
    "REVOKED": 4,
    "REJECTED": 4,
}
#: Runtime histogram buckets, seconds (as Prometheus's defaults).
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclasses.dataclass
class WorkerInfo:
    """What the events told about one worker."""

    hostname: str
    pid: int | None = None
    last_heartbeat: float = 0.0
    freq: float = HEARTBEAT_INTERVAL
    offline: bool = False
    processed: int = 0
    active: int = 0
    reserved: int = 0
    concurrency: int | None = None
    pool: str | None = None
    queues: list[str] = dataclasses.field(default_factory=list)
    loadavg: list[float] = dataclasses.field(default_factory=list)
    started_at: float | None = None

    @property
    def alive(self) -> bool:
        """Heard from within ``HEARTBEAT_EXPIRY`` heartbeats and not gone offline."""
        return not self.offline and time.time() - self.last_heartbeat < self.freq * HEARTBEAT_EXPIRY

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view, with ``alive``."""
        return {**dataclasses.asdict(self), "alive": self.alive}


@dataclasses.dataclass
class TaskInfo:
    """What the events told about one task."""

    uuid: str
    name: str | None = None
    state: str = "PENDING"
    worker: str | None = None
    queue: str | None = None
    args: str | None = None
    kwargs: str | None = None
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None
    runtime: float | None = None
    exception: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    updated: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return dataclasses.asdict(self)


class State:
    """Folds events into workers, tasks, per-(name, state) counters, runtime
    histograms and per-second throughput; thread-safe (one lock).

    Keeps the newest ``max_tasks`` tasks and ``history`` seconds of series.
    """

    def __init__(self, max_tasks: int = 10000, history: int = 900) -> None:
        self.max_tasks = max_tasks
        self.history = history
        self.lock = threading.RLock()
        self.workers: dict[str, WorkerInfo] = {}
        self.tasks: collections.OrderedDict[str, TaskInfo] = collections.OrderedDict()
        #: (task name, state) -> events seen; never trimmed (Prometheus counters).
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        #: task name -> [bucket counts..., +Inf count], sum of runtimes.
        self.runtime_buckets: dict[str, list[int]] = {}
        self.runtime_sum: dict[str, float] = collections.defaultdict(float)
        #: Unix second -> [succeeded, failed] in that second.
        self.throughput: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self.event_count = 0

    def event(self, event: dict[str, Any]) -> None:
        """Apply one event."""
        kind = str(event.get("type", ""))
        with self.lock:
            self.event_count += 1
            if kind.startswith("worker-"):
                self._worker_event(kind, event)
            elif kind.startswith("task-"):
                self._task_event(kind, event)

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        hostname = str(event.get("hostname", "?"))
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerInfo(hostname)
        worker.pid = event.get("pid", worker.pid)
        worker.last_heartbeat = max(worker.last_heartbeat, float(event.get("timestamp", 0)))
        worker.offline = kind == "worker-offline"
        for name in ("freq", "processed", "active", "reserved", "concurrency", "pool"):
            if event.get(name) is not None:
                setattr(worker, name, event[name])
        for name in ("queues", "loadavg"):
            if isinstance(event.get(name), list):
                setattr(worker, name, event[name])
        if event.get("started_at"):
            worker.started_at = event["started_at"]

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        uuid = event.get("uuid")
        if not uuid:
            return
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskInfo(str(uuid))
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(uuid)
        ts = float(event.get("timestamp", time.time()))
        task.updated = ts
        for name in ("name", "queue", "args", "kwargs", "eta", "expires", "root_id", "parent_id"):
            if event.get(name) is not None:
                setattr(task, name, event[name])
        if event.get("retries") is not None:
            task.retries = int(event["retries"])
        if kind != "task-sent":
            task.worker = str(event.get("hostname", task.worker))
        state = TASK_STATES.get(kind)
        if state is None:
            return
        if kind == "task-sent":
            task.sent = ts
        elif kind == "task-received":
            task.received = ts
        elif kind == "task-started":
            task.started = ts
        else:
            task.finished = ts
            if event.get("runtime") is not None:
                task.runtime = float(event["runtime"])
            task.exception = event.get("exception") or event.get("reason") or task.exception
        # A retried task comes back as received: a retry reopens it.
        reopening = task.state == "RETRY" and kind in ("task-received", "task-started")
        if reopening or _STATE_RANK[state] >= _STATE_RANK.get(task.state, 0):
            task.state = state
        name = task.name or "unknown"
        self.counts[(name, state)] += 1
        if state in ("SUCCESS", "FAILURE"):
            second = int(ts)
            slot = self.throughput.get(second)
            if slot is None:
                slot = self.throughput[second] = [0, 0]
                while self.throughput and next(iter(self.throughput)) < second - self.history:
                    self.throughput.popitem(last=False)
            slot[0 if state == "SUCCESS" else 1] += 1
            if task.runtime is not None:
                buckets = self.runtime_buckets.get(name)
                if buckets is None:
                    buckets = self.runtime_buckets[name] = [0] * (len(RUNTIME_BUCKETS) + 1)
                for i, bound in enumerate(RUNTIME_BUCKETS):
                    if task.runtime <= bound:
                        buckets[i] += 1
                buckets[-1] += 1
                self.runtime_sum[name] += task.runtime

    # -- queries -----------------------------------------------------------------

    def worker_list(self) -> list[dict[str, Any]]:
        """Every worker seen, by host name."""
        with self.lock:
            return [w.as_dict() for _, w in sorted(self.workers.items())]

    def task_list(
        self,
        state: str | None = None,
        name: str | None = None,
        worker: str | None = None,
        search: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Newest tasks first, filtered by state, name, worker, and a search text
        matched against the id, args and kwargs."""
        out = []
        needle = (search or "").lower()
        with self.lock:
            for task in reversed(self.tasks.values()):
                if state and task.state != state.upper():
                    continue
                if name and task.name != name:
                    continue
                if worker and task.worker != worker:
                    continue
                if needle and not any(
                    needle in (value or "").lower() for value in (task.uuid, task.args, task.kwargs)
                ):
                    continue
                out.append(task.as_dict())
                if len(out) >= limit:
                    break
        return out

    def task(self, uuid: str) -> TaskInfo | None:
        """One task, or ``None``."""
        with self.lock:
            return self.tasks.get(uuid)

    def series(self, seconds: int = 300, step: int = 5) -> list[dict[str, Any]]:
        """Succeeded and failed tasks per ``step`` seconds over the last ``seconds``."""
        now = int(time.time())
        start = now - seconds
        start -= start % step
        points = []
        with self.lock:
            for t in range(start, now + 1, step):
                ok = failed = 0
                for s in range(t, t + step):
                    slot = self.throughput.get(s)
                    if slot:
                        ok += slot[0]
                        failed += slot[1]
                points.append({"t": t, "succeeded": ok, "failed": failed})
        return points

    def task_names(self) -> list[str]:
        """Names of every task seen."""
        with self.lock:
            return sorted(
                {n for n, _ in self.counts} | {t.name for t in self.tasks.values() if t.name}
            )
