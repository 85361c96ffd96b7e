"""This process's broker and result backend connections: made on first use, and made
anew in a forked child, which must never reuse its parent's sockets or SQLite handles."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from polyq.registry import create_backend, create_transport

if TYPE_CHECKING:
    from polyq.app.base import Polyq
    from polyq.backend import ResultBackend
    from polyq.transport import Transport

__all__ = ["Connections"]

logger = logging.getLogger("polyq.app")


class Connections:
    """The app's two plugins for the current process (``app.transport``,
    ``app.backend``), built from its settings when first asked for."""

    def __init__(self, app: Polyq) -> None:
        self.app = app
        self.lock = threading.RLock()
        self._pid = os.getpid()
        self._transport: Transport | None = None
        self._backend: ResultBackend | None = None

    def transport(self) -> Transport:
        """The broker connection (created on first use)."""
        self._check_pid()
        if self._transport is None:
            with self.lock:
                if self._transport is None:
                    self._transport = create_transport(
                        self.app.broker_url, **self.options("broker_transport_options")
                    )
        return self._transport

    def backend(self) -> ResultBackend:
        """The result backend (created on first use)."""
        self._check_pid()
        if self._backend is None:
            with self.lock:
                if self._backend is None:
                    self._backend = create_backend(
                        self.app.backend_url, **self.options("result_backend_transport_options")
                    )
        return self._backend

    def options(self, key: str) -> dict[str, Any]:
        """A plugin's options: ``connect_timeout`` is ``broker_connection_timeout``
        unless the options (or the URL) give their own."""
        conf = self.app.conf
        timeout = conf.broker_connection_timeout
        options = dict(conf[key] or {})
        if timeout is not None:
            options.setdefault("connect_timeout", float(timeout))
        return options

    def reset(self) -> None:
        """Close both connections (in the process that made them) and forget them."""
        with self.lock:
            if self._pid == os.getpid():
                for conn in (self._transport, self._backend):
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:
                            logger.debug("closing %s failed", conn, exc_info=True)
            self._transport = None
            self._backend = None
            self._pid = os.getpid()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            # A forked child: never reuse the parent's sockets or SQLite handles.
            self._transport = None
            self._backend = None
            self._pid = os.getpid()
