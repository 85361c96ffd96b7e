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
    Binds to 127.0.0.1 unless told otherwise. ``basic_auth="user:password"``
    and/or ``token`` protect every route, ``/metrics`` included (Prometheus
    can send either). Actions are POSTs that must carry JSON and an
    ``X-Polyq-Action`` header, which a cross-site form cannot send (CSRF). Pages
    send a strict Content-Security-Policy (no inline script) and the script
    inserts text, never HTML. Broker and backend URLs appear only redacted.

What a broker cannot report
    ``/api/capabilities`` tells the page: no broadcast means no events, no
    inspection and no live workers; SQS queue depths are approximate; a broker
    that cannot list delayed messages shows none.
"""

from __future__ import annotations

import base64
import collections
import hmac
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from polyq import states
from polyq.app import Polyq
from polyq.control_args import ControlArgumentError
from polyq.events import RUNTIME_BUCKETS, EventReceiver, State
from polyq.result import decode_record, meta_key

__all__ = ["Monitor", "create_app"]

logger = logging.getLogger("polyq.monitor")

ACTIONS = ("pool_grow", "pool_shrink", "shutdown")


class Monitor:
    """The dashboard's state and background threads for one polyq app."""

    def __init__(
        self,
        app: Polyq,
        *,
        basic_auth: str | None = None,
        token: str | None = None,
        max_tasks: int = 10000,
        sample_interval: float = 2.0,
        history: int = 900,
    ) -> None:
        self.app = app
        self.basic_auth = basic_auth
        self.token = token
        self.state = State(max_tasks=max_tasks, history=history)
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
        """Queues worth showing: the broker's, the default one, and those workers consume."""
        names = {self.app.conf.task_default_queue}
        try:
            names.update(self.app.transport.queues())
        except Exception:
            logger.debug("listing queues failed", exc_info=True)
        with self.state.lock:
            for w in self.state.workers.values():
                names.update(w.queues)
        return sorted(names)

    def sample_queues(self) -> None:
        """Record each queue's depth now."""
        now = time.time()
        for name in self.queue_names():
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

    def serve(self, host: str = "127.0.0.1", port: int = 5555) -> None:
        """Start the threads and serve HTTP until interrupted (Werkzeug's threaded server)."""
        from werkzeug.serving import make_server

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
        workers = self.state.worker_list()
        by_state: collections.Counter[str] = collections.Counter()
        with self.state.lock:
            for t in self.state.tasks.values():
                by_state[t.state] += 1
            events = self.state.event_count
        return {
            "workers_online": sum(1 for w in workers if w["alive"]),
            "workers": len(workers),
            "tasks_by_state": dict(by_state),
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


class _Metrics(Collector):
    """Prometheus view of a :class:`Monitor`, computed at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Any:
        state = self.monitor.state
        tasks = CounterMetricFamily(
            "polyq_tasks", "Task events seen, by task name and state", labels=["name", "state"]
        )
        runtime = HistogramMetricFamily(
            "polyq_task_runtime_seconds", "Task run time, by task name", labels=["name"]
        )
        with state.lock:
            counts = sorted(state.counts.items())
            histos = {n: (list(b), state.runtime_sum[n]) for n, b in state.runtime_buckets.items()}
            workers = list(state.workers.values())
            events = state.event_count
        for (name, task_state), count in counts:
            tasks.add_metric([name, task_state], count)
        yield tasks
        for name, (buckets, total) in sorted(histos.items()):
            pairs = [(str(b), buckets[i]) for i, b in enumerate(RUNTIME_BUCKETS)]
            pairs.append(("+Inf", buckets[-1]))
            runtime.add_metric([name], pairs, total)
        yield runtime
        depth = GaugeMetricFamily("polyq_queue_depth", "Messages in the queue", labels=["queue"])
        for queue in self.monitor.queues():
            if queue["depth"] is not None:
                depth.add_metric([queue["name"]], queue["depth"])
        yield depth
        yield GaugeMetricFamily(
            "polyq_workers_online",
            "Workers heard from recently",
            value=sum(1 for w in workers if w.alive),
        )
        active = GaugeMetricFamily(
            "polyq_worker_active_tasks", "Tasks running on the worker", labels=["worker"]
        )
        processed = CounterMetricFamily(
            "polyq_worker_processed", "Tasks the worker finished", labels=["worker"]
        )
        for w in workers:
            if w.alive:
                active.add_metric([w.hostname], w.active)
                processed.add_metric([w.hostname], w.processed)
        yield active
        yield processed
        yield CounterMetricFamily("polyq_monitor_events", "Events received", value=events)


def create_app(monitor: Monitor) -> Flask:
    """The Flask application of ``monitor``."""
    flask = Flask(__name__)
    flask.config["JSON_SORT_KEYS"] = False
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Metrics(monitor))
    expected_basic = (
        "Basic " + base64.b64encode(monitor.basic_auth.encode()).decode()
        if monitor.basic_auth
        else None
    )

    @flask.before_request
    def authenticate() -> Any:
        if not (expected_basic or monitor.token):
            return None
        given = request.headers.get("Authorization", "")
        if expected_basic and hmac.compare_digest(given.encode(), expected_basic.encode()):
            return None
        if monitor.token and hmac.compare_digest(
            given.encode(), f"Bearer {monitor.token}".encode()
        ):
            return None
        return Response(
            "authentication required\n",
            401,
            {"WWW-Authenticate": 'Basic realm="polyq monitor", charset="UTF-8"'},
        )

    @flask.after_request
    def secure(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def page(name: str, **context: Any) -> str:
        return render_template(
            f"{name}.html",
            page=name,
            broker=monitor.app.transport.describe(),
            title=monitor.app.main or "polyq",
            **context,
        )

    # -- pages -----------------------------------------------------------------------

    @flask.get("/")
    def index() -> str:
        return page("overview")

    @flask.get("/workers")
    def workers_page() -> str:
        return page("workers")

    @flask.get("/tasks")
    def tasks_page() -> str:
        return page("tasks")

    @flask.get("/tasks/<task_id>")
    def task_page(task_id: str) -> str:
        return page("task", task_id=task_id)

    @flask.get("/queues")
    def queues_page() -> str:
        return page("queues")

    # -- JSON API --------------------------------------------------------------------

    @flask.get("/api/overview")
    def api_overview() -> Response:
        return jsonify(monitor.overview())

    @flask.get("/api/capabilities")
    def api_capabilities() -> Response:
        return jsonify(monitor.capabilities())

    @flask.get("/api/workers")
    def api_workers() -> Response:
        workers = monitor.state.worker_list()
        running = monitor.state.task_list(state="STARTED", limit=1000)
        for w in workers:
            w["active_tasks"] = [t for t in running if t["worker"] == w["hostname"]]
        return jsonify(workers)

    @flask.get("/api/tasks")
    def api_tasks() -> Response:
        args = request.args
        return jsonify(
            monitor.tasks(
                state=args.get("state") or None,
                name=args.get("name") or None,
                worker=args.get("worker") or None,
                search=args.get("search") or None,
                limit=min(int(args.get("limit", 200)), 5000),
            )
        )

    @flask.get("/api/task-names")
    def api_task_names() -> Response:
        return jsonify(monitor.state.task_names())

    @flask.get("/api/tasks/<task_id>")
    def api_task(task_id: str) -> Response:
        detail = monitor.task_detail(task_id)
        if detail is None:
            abort(404)
        return jsonify(detail)

    @flask.get("/api/queues")
    def api_queues() -> Response:
        return jsonify(monitor.queues())

    @flask.get("/api/throughput")
    def api_throughput() -> Response:
        seconds = min(int(request.args.get("seconds", 300)), monitor.history)
        step = max(1, int(request.args.get("step", 5)))
        return jsonify(monitor.state.series(seconds, step))

    def _action_body() -> dict[str, Any]:
        # A cross-site form cannot set this header nor send JSON without CORS consent.
        if request.headers.get("X-Polyq-Action") != "1" or not request.is_json:
            abort(400, "actions need JSON and the X-Polyq-Action: 1 header")
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else {}

    @flask.errorhandler(ControlArgumentError)
    def bad_control_argument(exc: ControlArgumentError) -> tuple[Response, int]:
        # The control client refused the action's arguments before sending anything.
        return jsonify({"error": str(exc)}), 400

    @flask.post("/api/tasks/<task_id>/revoke")
    def api_revoke(task_id: str) -> Response:
        body = _action_body()
        terminate = bool(body.get("terminate"))
        monitor.app.control.revoke(task_id, terminate=terminate)
        return jsonify({"ok": f"revoked {task_id}", "terminate": terminate})

    @flask.post("/api/rate_limit")
    def api_rate_limit() -> Response:
        body = _action_body()
        name = str(body.get("task_name") or "")
        if not name:
            abort(400, "task_name is required")
        rate = body.get("rate_limit") or None
        # Every live worker by name, so the call returns as soon as all answered.
        alive = [w["hostname"] for w in monitor.state.worker_list() if w["alive"]]
        replies = monitor.app.control.rate_limit(
            name, rate, destination=body.get("destination") or alive or None, timeout=3.0
        )
        return jsonify({"replies": replies})

    @flask.post("/api/workers/<hostname>/<action>")
    def api_worker_action(hostname: str, action: str) -> Response:
        if action not in ACTIONS:
            abort(404)
        body = _action_body()
        control = monitor.app.control
        if action == "shutdown":
            replies = control.shutdown(destination=[hostname], timeout=3.0)
        else:
            replies = getattr(control, action)(
                int(body.get("n") or 1), destination=[hostname], timeout=3.0
            )
        return jsonify({"replies": replies})

    @flask.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")

    @flask.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @flask.get("/favicon.ico")
    def favicon() -> Any:
        return redirect("/static/favicon.svg")

    return flask
