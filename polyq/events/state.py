"""Folding events into state: :class:`State` keeps workers, tasks, counters and
time series for the dashboard and ``/metrics``."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

from polyq.events.dispatcher import HEARTBEAT_EXPIRY, HEARTBEAT_INTERVAL

__all__ = ["RUNTIME_BUCKETS", "TASK_STATES", "State", "TaskInfo", "WorkerInfo"]


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
