"""Folding events into state: :class:`State` keeps workers, tasks, counters and
time series for the dashboard and ``/metrics``.

Events come from the broker, which anyone able to publish on it can write to, so
everything kept is bounded: the newest ``max_tasks`` tasks, the ``max_workers``
workers heard from last, ``max_task_names`` task names as metric labels (the rest
count under ``OTHER_NAME``), ``history`` seconds of throughput, and every text
field cut to a fixed length. No list of events is kept: each event is folded into
these tables and dropped, and every counter is updated as it arrives, so reading
them (``/metrics``, the overview) costs the same after ten events or ten million.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from typing import Any

from polyq.events.dispatcher import ARG_REPR_LIMIT, HEARTBEAT_EXPIRY, HEARTBEAT_INTERVAL

__all__ = [
    "OTHER_NAME",
    "RUNTIME_BUCKETS",
    "TASK_STATES",
    "State",
    "TaskInfo",
    "Throughput",
    "WorkerInfo",
]


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
#: The task name label that counts every name beyond ``max_task_names``.
OTHER_NAME = "(other)"

# Longest text kept per field (characters); longer values are cut.
_ID_LIMIT = 255
_NAME_LIMIT = 200
_TEXT_LIMIT = 2048
_SHORT_LIMIT = 64
#: Queues kept per worker (a heartbeat lists what it consumes).
_WORKER_QUEUES = 32
#: Seconds an event's timestamp may lie ahead of this clock and still count in the series.
_FUTURE_SKEW = 60


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for anything else (strings, NaN, infinities)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(max(0.0, min(number, 2.0**62)))


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


#: Task fields copied from events, with the longest text kept.
_TASK_TEXT = {
    "name": _NAME_LIMIT,
    "queue": _NAME_LIMIT,
    "args": ARG_REPR_LIMIT,
    "kwargs": ARG_REPR_LIMIT,
    "eta": _SHORT_LIMIT,
    "expires": _SHORT_LIMIT,
    "root_id": _ID_LIMIT,
    "parent_id": _ID_LIMIT,
}


class Throughput:
    """Succeeded and failed tasks per second over the last ``history`` seconds, in a
    ring of fixed size: adding is O(1), a query reads the ring once whatever its step,
    and events timestamped outside the window are not counted."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.size = history + _FUTURE_SKEW + 1
        #: slot -> [unix second, succeeded, failed]; a slot holding another second is stale.
        self._slots = [[-1, 0, 0] for _ in range(self.size)]

    def add(self, second: int, failed: bool, now: float) -> None:
        """Count one finished task in ``second`` (ignored outside the window)."""
        if not now - self.history <= second <= now + _FUTURE_SKEW:
            return
        slot = self._slots[second % self.size]
        if slot[0] != second:
            slot[:] = [second, 0, 0]
        slot[2 if failed else 1] += 1

    def series(self, seconds: int, step: int, now: int) -> list[dict[str, Any]]:
        """Points ``{"t", "succeeded", "failed"}`` every ``step`` seconds from
        ``now - seconds`` (rounded down to a step) to ``now``."""
        start = now - seconds
        start -= start % step
        points = [{"t": t, "succeeded": 0, "failed": 0} for t in range(start, now + 1, step)]
        for second, ok, failed in self._slots:
            if start <= second <= now:
                point = points[(second - start) // step]
                point["succeeded"] += ok
                point["failed"] += failed
        return points


class State:
    """Folds events into workers, tasks, per-(name, state) counters, runtime
    histograms and per-second throughput; thread-safe (one lock).

    Keeps the newest ``max_tasks`` tasks, the ``max_workers`` workers heard from
    last, ``max_task_names`` names as labels and ``history`` seconds of series.
    """

    def __init__(
        self,
        max_tasks: int = 10000,
        history: int = 900,
        *,
        max_workers: int = 5000,
        max_task_names: int = 1000,
    ) -> None:
        for label, value in (
            ("max_tasks", max_tasks),
            ("history", history),
            ("max_workers", max_workers),
            ("max_task_names", max_task_names),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, not {value!r}")
        self.max_tasks = max_tasks
        self.history = history
        self.max_workers = max_workers
        self.max_task_names = max_task_names
        self.lock = threading.RLock()
        #: Least recently heard first.
        self.workers: collections.OrderedDict[str, WorkerInfo] = collections.OrderedDict()
        #: Least recently updated first.
        self.tasks: collections.OrderedDict[str, TaskInfo] = collections.OrderedDict()
        #: Tasks kept, by state (kept up to date as tasks change and are dropped).
        self.task_states: collections.Counter[str] = collections.Counter()
        #: (task name, state) -> events seen; never trimmed (Prometheus counters).
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        #: task name -> [bucket counts..., +Inf count], sum of runtimes.
        self.runtime_buckets: dict[str, list[int]] = {}
        self.runtime_sum: dict[str, float] = collections.defaultdict(float)
        self.throughput = Throughput(history)
        #: Task names used as labels (at most ``max_task_names``).
        self.names: set[str] = set()
        self.event_count = 0

    def event(self, event: Any) -> None:
        """Apply one event (anything that is not an event dict is ignored)."""
        if not isinstance(event, dict):
            return
        kind = str(event.get("type", ""))
        with self.lock:
            self.event_count += 1
            if kind.startswith("worker-"):
                self._worker_event(kind, event)
            elif kind.startswith("task-"):
                self._task_event(kind, event)

    def _label(self, name: str | None) -> str:
        """``name`` as a metric label, or ``OTHER_NAME`` once the labels are full."""
        label = name or "unknown"
        if label in self.names:
            return label
        if len(self.names) < self.max_task_names:
            self.names.add(label)
            return label
        return OTHER_NAME

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        hostname = _text(event.get("hostname"), _ID_LIMIT) or "?"
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerInfo(hostname)
            while len(self.workers) > self.max_workers:
                self.workers.popitem(last=False)
        else:
            self.workers.move_to_end(hostname)
        pid = _count(event.get("pid"))
        worker.pid = pid if pid is not None else worker.pid
        worker.last_heartbeat = max(worker.last_heartbeat, _number(event.get("timestamp")) or 0.0)
        worker.offline = kind == "worker-offline"
        freq = _number(event.get("freq"))
        if freq is not None:
            worker.freq = min(max(freq, 0.1), 3600.0)
        for name in ("processed", "active", "reserved", "concurrency"):
            value = _count(event.get(name))
            if value is not None:
                setattr(worker, name, value)
        if event.get("pool") is not None:
            worker.pool = _text(event["pool"], _SHORT_LIMIT)
        queues = event.get("queues")
        if isinstance(queues, list):
            worker.queues = [str(_text(q, _NAME_LIMIT)) for q in queues[:_WORKER_QUEUES]]
        loadavg = event.get("loadavg")
        if isinstance(loadavg, list):
            worker.loadavg = [n for n in map(_number, loadavg[:3]) if n is not None]
        started_at = _number(event.get("started_at"))
        if started_at:
            worker.started_at = started_at

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        uuid = event.get("uuid")
        if not uuid or not isinstance(uuid, str) or len(uuid) > _ID_LIMIT:
            return
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskInfo(uuid)
            self.task_states[task.state] += 1
            while len(self.tasks) > self.max_tasks:
                _, dropped = self.tasks.popitem(last=False)
                self.task_states[dropped.state] -= 1
        else:
            self.tasks.move_to_end(uuid)
        now = time.time()
        ts = _number(event.get("timestamp"))
        ts = now if ts is None else ts
        task.updated = ts
        for name, limit in _TASK_TEXT.items():
            if event.get(name) is not None:
                setattr(task, name, _text(event[name], limit))
        retries = _count(event.get("retries"))
        if retries is not None:
            task.retries = retries
        if kind != "task-sent" and event.get("hostname") is not None:
            task.worker = _text(event["hostname"], _ID_LIMIT)
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
            runtime = _number(event.get("runtime"))
            if runtime is not None:
                task.runtime = runtime
            reason = event.get("exception") or event.get("reason")
            task.exception = _text(reason, _TEXT_LIMIT) if reason else task.exception
        # A retried task comes back as received: a retry reopens it.
        reopening = task.state == "RETRY" and kind in ("task-received", "task-started")
        if reopening or _STATE_RANK[state] >= _STATE_RANK.get(task.state, 0):
            self.task_states[task.state] -= 1
            self.task_states[state] += 1
            task.state = state
        name = self._label(task.name)
        self.counts[(name, state)] += 1
        if state in ("SUCCESS", "FAILURE"):
            self.throughput.add(int(ts), state == "FAILURE", now)
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
        """Every worker kept, by host name."""
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
        matched against the id, args and kwargs. Reads at most ``max_tasks`` tasks."""
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
        """Succeeded and failed tasks per ``step`` seconds over the last ``seconds``
        (1 <= step <= seconds <= ``history``); reads the ring once, whatever the step."""
        if not 1 <= step <= seconds <= self.history:
            raise ValueError(
                f"need 1 <= step <= seconds <= {self.history}, got step={step}, seconds={seconds}"
            )
        with self.lock:
            return self.throughput.series(seconds, step, int(time.time()))

    def task_names(self) -> list[str]:
        """Task names seen (at most ``max_task_names``)."""
        with self.lock:
            return sorted(self.names - {"unknown"})
