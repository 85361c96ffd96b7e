"""What a worker checks before it takes any message: that the broker and the result
backend answer. A worker that cannot store results would run every task only to
fail it, so it does not start; see docs/workers.md (*Start-up checks*)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from polyq.exceptions import BrokerError, BrokerRefused
from polyq.url import redact

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.transport import Transport

__all__ = ["check_connections"]

logger = logging.getLogger("polyq.worker")

#: The longest pause between two start-up attempts to reach the result backend.
_RETRY_MAX = 5.0
#: A key no one writes: reading it proves the result backend answers.
_PROBE_KEY = "polyq-startup-probe"


def check_connections(
    app: Polyq, transport: Transport, queue: str, stopping: threading.Event
) -> str | None:
    """``None`` when the worker can start, else the one-line reason it cannot.

    A final refusal (:class:`BrokerRefused`: credentials, vhost, database) stops the
    worker at once. An unreachable broker or backend stops it too when
    ``broker_connection_retry_on_startup`` is false; when it is true (the default)
    the worker starts anyway for the broker (its consumer reconnects) but waits for
    the result backend, retrying, since no task could store its result."""
    retry = app.conf.broker_connection_retry_on_startup is not False
    try:
        transport.size(queue)  # any call that needs the broker
    except BrokerError as exc:
        if isinstance(exc, BrokerRefused) or not retry:
            return _reason("broker", transport.describe(), exc, retry)
        logger.warning(
            "cannot reach the broker at %s on start-up (%s); starting anyway, the "
            "worker connects as soon as it answers",
            redact(transport.describe()),
            redact(str(exc)),
        )
    pause = 0.5
    while True:
        backend = app.backend  # created here: an unknown scheme has failed earlier
        try:
            backend.get(_PROBE_KEY)
            return None
        except BrokerError as exc:
            if isinstance(exc, BrokerRefused) or not retry:
                return _reason("result backend", backend.describe(), exc, retry)
            logger.warning(
                "cannot reach the result backend at %s on start-up (%s); retrying in %.1f s",
                redact(backend.describe()),
                redact(str(exc)),
                pause,
            )
        if stopping.wait(pause):
            return "stopped while waiting for the result backend on start-up"
        pause = min(pause * 2, _RETRY_MAX)


def _reason(what: str, where: str, exc: BrokerError, retry: bool) -> str:
    if isinstance(exc, BrokerRefused):
        return redact(f"the {what} at {where} refused the worker on start-up: {exc}")
    assert not retry
    return redact(
        f"cannot reach the {what} at {where} on start-up ({exc}), and "
        "broker_connection_retry_on_startup is false: not starting. Start it first, or "
        "leave the setting true to wait for it"
    )
