"""The web dashboard: ``polyq -A proj monitor --port 5555`` (``pip install 'polyq[monitor]'``).

Design
    One process, three parts, all reading one :class:`polyq.events.State`:

    - an **event listener** thread subscribed to the workers' events (workers
      need ``-E``): workers, tasks, counters, runtime histograms, throughput;
    - a **queue sampler** thread asking the broker for each queue's depth every
      ``sample_interval`` seconds, kept as a time series;
    - a **Flask** app: HTML pages (workers, tasks, task detail, queues, an
      overview with charts) whose tables and charts are drawn by a small
      script from the JSON API it polls every second and a half; the JSON API
      itself (``/api/...``); Prometheus ``/metrics``; and actions (revoke,
      rate limit, pool grow/shrink, shutdown) that the page sends after a
      confirmation dialog.

    Task details the events do not carry (result, traceback, ``update_state``
    progress meta) are read from the result backend when asked for.

Security
    Binds to 127.0.0.1 unless told otherwise, and answers only requests whose
    ``Host`` header names a loopback name, the address it is bound to or one of
    ``allowed_hosts`` (so a DNS-rebinding page cannot reach it).
    ``basic_auth="user:password"`` and/or ``token`` protect every route,
    ``/metrics`` included (Prometheus can send either). Actions are POSTs that
    must carry JSON and an ``X-Polyq-Action`` header, which a cross-site form
    cannot send (CSRF). Pages send a strict Content-Security-Policy (no inline
    script) and the script inserts text, never HTML, and encodes every id it
    puts in a URL. Query parameters and ids are checked (:mod:`.guards`).
    Memory is bounded: see :class:`polyq.events.State`. Broker and backend URLs
    appear only redacted.

What a broker cannot report
    ``/api/capabilities`` tells the page: no broadcast means no events, no
    inspection and no live workers; SQS queue depths are approximate; a broker
    that cannot list delayed messages shows none.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from polyq import states
from polyq.app import Polyq
from polyq.events import EventReceiver, State
from polyq.monitor.guards import LOOPBACK_HOSTS, normalize_hosts
from polyq.monitor.routes import create_app
from polyq.result import decode_record, meta_key

__all__ = ["MAX_QUEUES", "Monitor", "create_app"]

logger = logging.getLogger("polyq.monitor")

#: Queues sampled and kept at most (worker heartbeats name queues, and anyone who can
#: publish events can send heartbeats).
MAX_QUEUES = 256


class Monitor:
    """The dashboard's state and background threads for one polyq app."""

    def __init__(
        self,
        app: Polyq,
        *,
        basic_auth: str | None = None,
        token: str | None = None,
        max_tasks: int | None = None,
        sample_interval: float = 2.0,
        history: int = 900,
        max_workers: int | None = None,
        max_task_names: int | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        """``max_tasks``, ``max_workers``, ``max_task_names`` and ``allowed_hosts``
        default to the settings ``monitor_max_tasks``... of ``app``; ``allowed_hosts``
        adds Host names to the loopback ones (``*`` allows any)."""
        conf = app.conf
        self.app = app
        self.basic_auth = basic_auth
        self.token = token
        extra = conf.monitor_allowed_hosts if allowed_hosts is None else allowed_hosts
        if isinstance(extra, str):
            extra = [extra]
        #: Host names (of the ``Host`` header) this dashboard answers.
        self.allowed_hosts = normalize_hosts([*LOOPBACK_HOSTS, *extra])
        self.state = State(
            max_tasks=conf.monitor_max_tasks if max_tasks is None else max_tasks,
            history=history,
            max_workers=conf.monitor_max_workers if max_workers is None else max_workers,
            max_task_names=(
                conf.monitor_max_task_names if max_task_names is None else max_task_names
            ),
        )
        self.sample_interval = sample_interval
        self.history = history
        #: queue -> deque of (unix time, depth)
        self.depths: dict[str, collections.deque[tuple[float, int]]] = {}
        self._depth_lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: EventReceiver | None = None
        self._threads: list[threading.Thread] = []
        self.flask = create_app(self)

    # -- background ------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to events (before returning: nothing sent afterwards is
        missed) and start the listener and sampler threads."""
        if self.app.transport.capabilities.broadcast:
            self._receiver = EventReceiver(self.app).open()
            self._spawn(self._listen, "polyq-monitor-events")
        self._spawn(self._sample, "polyq-monitor-queues")

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _listen(self) -> None:
        assert self._receiver is not None
        while not self._stop.is_set():
            try:
                self._receiver.capture(self.state.event)
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("event listener failed; resubscribing in 2s")
                self._stop.wait(2.0)
                try:
                    self._receiver = EventReceiver(self.app).open()
                except Exception:
                    logger.exception("cannot resubscribe to events")

    def queue_names(self) -> list[str]:
        """Queues worth showing: the default one, the broker's, and those workers
        consume, in that order of preference, at most ``MAX_QUEUES``."""
        names = {self.app.conf.task_default_queue: None}
        try:
            names.update(dict.fromkeys(self.app.transport.queues()))
        except Exception:
            logger.debug("listing queues failed", exc_info=True)
        with self.state.lock:
            for w in reversed(self.state.workers.values()):  # heard from last first
                if len(names) >= MAX_QUEUES:
                    break
                names.update(dict.fromkeys(w.queues))
        return sorted(list(names)[:MAX_QUEUES])

    def sample_queues(self) -> None:
        """Record each queue's depth now (forgetting queues no longer listed once
        ``MAX_QUEUES`` series are kept)."""
        now = time.time()
        names = self.queue_names()
        with self._depth_lock:
            if len(self.depths) > MAX_QUEUES:
                listed = set(names)
                for gone in [n for n in self.depths if n not in listed]:
                    del self.depths[gone]
        for name in names:
            try:
                depth = self.app.transport.size(name)
            except Exception:
                logger.debug("size of %s failed", name, exc_info=True)
                continue
            with self._depth_lock:
                series = self.depths.get(name)
                if series is None:
                    size = max(10, int(self.history / self.sample_interval))
                    series = self.depths[name] = collections.deque(maxlen=size)
                series.append((now, depth))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sample_queues()
            self._stop.wait(self.sample_interval)

    def stop(self) -> None:
        """Stop the threads and unsubscribe."""
        self._stop.set()
        if self._receiver is not None:
            self._receiver.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def allow_bind_address(self, address: str) -> None:
        """Answer requests naming ``address``, the one served (a specific one: the
        wildcards 0.0.0.0 and :: name no host)."""
        if address not in ("0.0.0.0", "::", ""):
            self.allowed_hosts = normalize_hosts([*self.allowed_hosts, address])

    def serve(self, host: str = "127.0.0.1", port: int = 5555) -> None:
        """Start the threads and serve HTTP until interrupted (Werkzeug's threaded server)."""
        from werkzeug.serving import make_server

        self.allow_bind_address(host)
        self.start()
        server = make_server(host, port, self.flask, threaded=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            self.stop()

    # -- reading ---------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """What this broker can report, for the page."""
        transport = self.app.transport
        caps = transport.capabilities
        return {
            "broker": transport.describe(),
            "backend": self.app.backend.describe(),
            "events": caps.broadcast,
            "control": caps.broadcast,
            "scheduled": caps.inspect_scheduled,
            "dead_letters": caps.dead_letter,
            "exact_queue_depth": caps.exact_size,
        }

    def queues(self) -> list[dict[str, Any]]:
        """Each queue with its latest depth and series."""
        out = []
        with self._depth_lock:
            items = sorted(self.depths.items())
            for name, series in items:
                points = [{"t": round(t, 1), "depth": d} for t, d in series]
                out.append(
                    {
                        "name": name,
                        "depth": points[-1]["depth"] if points else None,
                        "series": points,
                    }
                )
        return out

    def latest_depths(self) -> dict[str, int]:
        """Each queue's latest depth (no series: what ``/metrics`` reads)."""
        with self._depth_lock:
            return {name: series[-1][1] for name, series in self.depths.items() if series}

    def backend_records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Result-backend records (state, result, traceback, meta) of ``ids``."""
        if not ids:
            return {}
        try:
            found = self.app.backend.get_many([meta_key(i) for i in ids])
        except Exception:
            logger.debug("reading results failed", exc_info=True)
            return {}
        records = {}
        for task_id in ids:
            data = found.get(meta_key(task_id))
            if data is None:
                continue
            try:
                records[task_id] = decode_record(data, self.app.result_accept)
            except Exception:
                logger.debug("undecodable record of %s", task_id, exc_info=True)
        return records

    def tasks(self, **filters: Any) -> list[dict[str, Any]]:
        """Tasks from events; unfinished ones get their ``update_state`` progress
        from the backend."""
        tasks = self.state.task_list(**filters)
        running = [t["uuid"] for t in tasks if t["state"] not in states.READY_STATES][:100]
        records = self.backend_records(running)
        for task in tasks:
            record = records.get(task["uuid"])
            if record and record.get("status") not in (states.PENDING, None):
                status = str(record["status"])
                if status not in states.READY_STATES and status not in (
                    states.STARTED,
                    states.RECEIVED,
                    states.RETRY,
                ):
                    task["progress"] = _jsonable(record.get("result"))
                    task["backend_state"] = status
        return tasks

    def task_detail(self, task_id: str) -> dict[str, Any] | None:
        """Everything known of one task: events plus its backend record."""
        info = self.state.task(task_id)
        record = self.backend_records([task_id]).get(task_id)
        revoked = bool(self.app.backend.get("polyq-revoked-" + task_id))
        if info is None and record is None and not revoked:
            return None
        out: dict[str, Any] = info.as_dict() if info else {"uuid": task_id}
        if record:
            out["backend_state"] = record.get("status")
            if record.get("status") in states.EXCEPTION_STATES:
                out["result"] = f"{record.get('exc_type', '')}: {record.get('exc_message', '')}"
            else:
                out["result"] = _jsonable(record.get("result"))
            out["traceback"] = record.get("traceback")
            out["date_done"] = record.get("date_done")
            for key in ("args", "kwargs", "name", "worker", "retries"):
                if out.get(key) in (None, "") and record.get(key) is not None:
                    value = record[key]
                    out[key] = repr(value) if key in ("args", "kwargs") else value
            if out.get("state") in (None, "PENDING") and record.get("status"):
                out["state"] = record["status"]
        out["revoked"] = revoked
        return out

    def overview(self) -> dict[str, Any]:
        """Counts for the front page."""
        with self.state.lock:
            # Kept up to date as events arrive: no task is read here.
            by_state = {s: n for s, n in self.state.task_states.items() if n > 0}
            events = self.state.event_count
            workers = list(self.state.workers.values())
        return {
            "workers_online": sum(1 for w in workers if w.alive),
            "workers": len(workers),
            "tasks_by_state": by_state,
            "events": events,
            "capabilities": self.capabilities(),
        }


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
