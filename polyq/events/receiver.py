"""Receiving events: :class:`EventReceiver` subscribes to the event channel and
yields single events (with signing on, only those in a broadcast whose signature
holds; the others are counted in ``refused`` and logged)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from polyq.events.dispatcher import EVENT_CHANNEL, decode_events
from polyq.exceptions import ConfigurationError, SecurityError
from polyq.security import KIND_EVENT

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.transport import Subscription

__all__ = ["EventReceiver"]

logger = logging.getLogger("polyq.events")


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
        #: Broadcasts dropped because signing is on and their signature did not hold.
        self.refused = 0

    def open(self) -> EventReceiver:
        """Subscribe now; events sent from this point on are not missed."""
        transport = self.app.transport
        if not transport.capabilities.broadcast:
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
            if body is None:
                continue
            security = self.app.security
            if security is not None:
                try:
                    body = security.verifier.verify_broadcast(KIND_EVENT, body)
                except SecurityError as exc:
                    self.refused += 1
                    logger.warning("dropped an event broadcast (%d so far): %s", self.refused, exc)
                    continue
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
