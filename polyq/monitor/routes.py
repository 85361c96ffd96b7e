"""The dashboard's Flask application: pages, JSON API, actions, ``/metrics``.

Every request first passes two checks: its ``Host`` header must name a host the
monitor answers to (:attr:`Monitor.allowed_hosts <polyq.monitor.web.Monitor>`;
``/healthz`` excepted, which tells nothing), then authentication when configured.
Query parameters, ids and action bodies are checked by :mod:`polyq.monitor.guards`;
a refused one is answered 400 with ``{"error", "parameter"}``.
"""

from __future__ import annotations

import base64
import hmac
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException

from polyq.control_args import ControlArgumentError
from polyq.events import TASK_STATES
from polyq.monitor.guards import (
    MAX_TEXT,
    BadParameter,
    body_id,
    host_allowed,
    int_param,
    path_id,
    text_param,
)
from polyq.monitor.metrics import MonitorCollector
from polyq.worker.ratelimit import parse_rate

if TYPE_CHECKING:
    from polyq.monitor.web import Monitor

__all__ = ["ACTIONS", "MAX_LIMIT", "create_app"]

#: Worker actions of ``POST /api/workers/<name>/<action>``.
ACTIONS = ("pool_grow", "pool_shrink", "shutdown")
#: Most tasks one ``/api/tasks`` call returns.
MAX_LIMIT = 5000
#: Most pool processes one pool_grow or pool_shrink adds or removes.
MAX_POOL_STEP = 100
#: Most worker names one rate_limit call names.
MAX_DESTINATIONS = 1000
_STATES = frozenset(TASK_STATES.values())


def _action_body() -> dict[str, Any]:
    # A cross-site form cannot set this header nor send JSON without CORS consent.
    if request.headers.get("X-Polyq-Action") != "1" or not request.is_json:
        abort(400, "actions need JSON and the X-Polyq-Action: 1 header")
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadParameter("body", "must be a JSON object")
    return body


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadParameter(name, f"must be true or false, not {value!r}"[:120])
    return value


def _destination(value: Any) -> list[str] | None:
    if value in (None, "", []):
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or len(names) > MAX_DESTINATIONS:
        raise BadParameter(
            "destination", f"must be a worker name or a list of at most {MAX_DESTINATIONS}"
        )
    return [body_id(name, "destination") for name in names]


def create_app(monitor: Monitor) -> Flask:
    """The Flask application of ``monitor``."""
    flask = Flask(__name__)
    flask.config["JSON_SORT_KEYS"] = False
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor))
    expected_basic = (
        "Basic " + base64.b64encode(monitor.basic_auth.encode()).decode()
        if monitor.basic_auth
        else None
    )

    @flask.before_request
    def check_host() -> Any:
        # DNS rebinding: a page of evil.example re-resolved to 127.0.0.1 reaches this
        # server with "Host: evil.example"; only names configured here are answered.
        host = request.headers.get("Host")
        if request.path == "/healthz" or host_allowed(host, monitor.allowed_hosts):
            return None
        shown = (host or "")[:100]
        return Response(
            f"Host {shown!r} is not allowed. Serve that name with --allowed-host "
            "NAME (or the monitor_allowed_hosts setting); allowed now: "
            f"{', '.join(monitor.allowed_hosts)}\n",
            400,
            {"Content-Type": "text/plain; charset=utf-8"},
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

    @flask.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        # The API answers errors in JSON (never an HTML page), naming the parameter.
        if not request.path.startswith("/api/"):
            return error
        body: dict[str, Any] = {"error": error.description or error.name}
        if isinstance(error, BadParameter):
            body["parameter"] = error.parameter
        return jsonify(body), error.code or 500

    @flask.errorhandler(ControlArgumentError)
    def bad_control_argument(exc: ControlArgumentError) -> tuple[Response, int]:
        # The control client refused the action's arguments before sending anything.
        return jsonify({"error": str(exc)}), 400

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
        return page("task", task_id=path_id(task_id, "task_id"))

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
        running: dict[str | None, list[dict[str, Any]]] = {}
        for task in monitor.state.task_list(state="STARTED", limit=1000):
            running.setdefault(task["worker"], []).append(task)
        for w in workers:
            w["active_tasks"] = running.get(w["hostname"], [])
        return jsonify(workers)

    @flask.get("/api/tasks")
    def api_tasks() -> Response:
        args = request.args
        state = text_param(args, "state")
        if state and state.upper() not in _STATES:
            raise BadParameter("state", f"must be one of {', '.join(sorted(_STATES))}")
        return jsonify(
            monitor.tasks(
                state=state,
                name=text_param(args, "name"),
                worker=text_param(args, "worker"),
                search=text_param(args, "search"),
                limit=int_param(args, "limit", 200, 1, MAX_LIMIT),
            )
        )

    @flask.get("/api/task-names")
    def api_task_names() -> Response:
        return jsonify(monitor.state.task_names())

    @flask.get("/api/tasks/<task_id>")
    def api_task(task_id: str) -> Response:
        detail = monitor.task_detail(path_id(task_id, "task_id"))
        if detail is None:
            abort(404, f"no task {task_id} (not seen by this monitor nor in the result backend)")
        return jsonify(detail)

    @flask.get("/api/queues")
    def api_queues() -> Response:
        return jsonify(monitor.queues())

    @flask.get("/api/throughput")
    def api_throughput() -> Response:
        # The cost is one pass over `history` one-second slots, whatever the step.
        seconds = int_param(request.args, "seconds", min(300, monitor.history), 1, monitor.history)
        step = int_param(request.args, "step", min(5, seconds), 1, seconds)
        return jsonify(monitor.state.series(seconds, step))

    def revoke(task_id: str, body: dict[str, Any]) -> Response:
        terminate = _flag(body, "terminate")
        monitor.app.control.revoke(task_id, terminate=terminate)
        return jsonify({"ok": f"revoked {task_id}", "terminate": terminate})

    @flask.post("/api/revoke")
    def api_revoke_body() -> Response:
        # The page's revoke: the id travels in the body, so no id can change the URL.
        body = _action_body()
        return revoke(body_id(body.get("task_id"), "task_id"), body)

    @flask.post("/api/tasks/<task_id>/revoke")
    def api_revoke(task_id: str) -> Response:
        body = _action_body()
        return revoke(path_id(task_id, "task_id"), body)

    @flask.post("/api/rate_limit")
    def api_rate_limit() -> Response:
        body = _action_body()
        name = body_id(body.get("task_name"), "task_name")
        rate = body.get("rate_limit") or None
        if rate is not None:
            if not isinstance(rate, str | int | float) or isinstance(rate, bool):
                raise BadParameter("rate_limit", "must be a string such as '10/s', or null")
            try:
                parse_rate(rate)
            except ValueError as exc:
                raise BadParameter("rate_limit", str(exc)[:MAX_TEXT]) from None
        destination = _destination(body.get("destination"))
        # Every live worker by name, so the call returns as soon as all answered.
        alive = [w["hostname"] for w in monitor.state.worker_list() if w["alive"]]
        replies = monitor.app.control.rate_limit(
            name, rate, destination=destination or alive or None, timeout=3.0
        )
        return jsonify({"replies": replies})

    @flask.post("/api/workers/<hostname>/<action>")
    def api_worker_action(hostname: str, action: str) -> Response:
        if action not in ACTIONS:
            abort(404, f"no worker action {action[:40]!r}; actions: {', '.join(ACTIONS)}")
        hostname = path_id(hostname, "hostname")
        body = _action_body()
        control = monitor.app.control
        if action == "shutdown":
            replies = control.shutdown(destination=[hostname], timeout=3.0)
        else:
            n = int_param(body, "n", 1, 1, MAX_POOL_STEP)
            replies = getattr(control, action)(n, destination=[hostname], timeout=3.0)
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
