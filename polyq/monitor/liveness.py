"""A cheap liveness signal for container orchestrators.

A worker is *live* when its consumer loop went round recently (it polls the
broker at least every ``receive_wait`` seconds, so a loop stuck for
``max_stall`` seconds means a hung worker), it is not shutting down, and its
threads are running. Two ways to expose that, both off by default:

- ``--heartbeat-file PATH``: the file's modification time is refreshed every
  ``interval`` seconds while live. A probe checks its age, e.g. Kubernetes
  ``exec: [sh, -c, 'test $(( $(date +%s) - $(stat -c %Y /tmp/polyq-alive) )) -lt 30']``.
- ``--health-port N``: ``GET /healthz`` on 127.0.0.1:N answers 200 ``ok`` while
  live and 503 with the reason otherwise (a Kubernetes ``httpGet`` probe).

Neither touches the broker: a broker outage is not a reason to restart workers
(they reconnect on their own), and a probe must stay cheap.
"""

from __future__ import annotations

import http.server
import logging
import os
import pathlib
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polyq.worker import Worker

__all__ = ["Liveness"]

logger = logging.getLogger("polyq.worker")


class Liveness:
    """Watches ``worker`` and publishes its liveness to a file and/or a port."""

    def __init__(
        self,
        worker: Worker,
        heartbeat_file: str | None = None,
        port: int | None = None,
        *,
        interval: float = 5.0,
        max_stall: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.worker = worker
        self.path = pathlib.Path(heartbeat_file) if heartbeat_file else None
        self.port = port
        self.host = host
        self.interval = interval
        self.max_stall = max_stall
        self._server: http.server.ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    def check(self) -> str | None:
        """``None`` when live, else why not."""
        w = self.worker
        if w.stopping.is_set():
            return "shutting down"
        stalled = time.monotonic() - getattr(w, "last_poll", time.monotonic())
        if stalled > self.max_stall:
            return f"consumer loop stalled for {stalled:.0f}s"
        dead = [t.name for t in w.threads if not t.is_alive() and t.name != "polyq-control"]
        if dead:
            return f"thread(s) died: {', '.join(dead)}"
        return None

    def start(self) -> None:
        """Start the file refresher and/or the HTTP endpoint (daemon threads)."""
        if self.path is not None:
            threading.Thread(target=self._touch_loop, name="polyq-liveness", daemon=True).start()
        if self.port is not None:
            self._server = http.server.ThreadingHTTPServer((self.host, self.port), self._handler())
            self._server.daemon_threads = True
            threading.Thread(
                target=self._server.serve_forever, name="polyq-health", daemon=True
            ).start()
            logger.info("liveness endpoint on http://%s:%d/healthz", self.host, self.port)

    def stop(self) -> None:
        """Stop both; removes the heartbeat file."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _touch_loop(self) -> None:
        assert self.path is not None
        while not self._stop.is_set():
            problem = self.check()
            if problem is None:
                self.path.touch()
                os.utime(self.path)
            else:
                logger.warning("not live (%s): %s left to age", problem, self.path)
            self._stop.wait(self.interval)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        liveness = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/healthz", "/livez", "/"):
                    self.send_error(404)
                    return
                problem = liveness.check()
                body = (problem or "ok").encode()
                self.send_response(200 if problem is None else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would flood the worker's log

        return Handler
