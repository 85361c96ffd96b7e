"""The RabbitMQ plugin fails fast: a refusal (wrong password, unknown vhost) is
final and raised at once, and a broker nobody answers for is reported within
``broker_connection_timeout`` (it took a producer 40.9 s, and 11 s for a wrong
password, before)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from polyq import Polyq
from polyq.exceptions import BrokerError, BrokerRefused
from polyq.testing.services import amqp_url

pytestmark = pytest.mark.timeout(60)


def _url(user: str, password: str, vhost: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(amqp_url())
    netloc = f"{user}:{password}@{parts.hostname}:{port or parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, f"/{vhost}" if vhost else parts.path, "", ""))


def _delay(url: str) -> tuple[BaseException, float]:
    app = Polyq("amqp-errors", broker=url, backend="memory://")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerError) as info:
            app.send_task("t", (1,))
        return info.value, time.monotonic() - started
    finally:
        app.close()


def test_wrong_password_is_refused_at_once() -> None:
    error, took = _delay(_url("guest", "wrong-password"))
    assert isinstance(error, BrokerRefused), error
    assert "authentication failed" in str(error)
    assert "wrong-password" not in str(error)
    assert took < 3.0, took


def test_unknown_vhost_is_refused_at_once() -> None:
    parts = urlsplit(amqp_url())
    error, took = _delay(
        _url(parts.username or "guest", parts.password or "guest", "no-such-vhost-x")
    )
    assert isinstance(error, BrokerRefused), error
    assert "vhost" in str(error)
    assert took < 3.0, took


def test_an_unreachable_broker_is_reported_within_the_connection_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    error, took = _delay(_url("guest", "guest", port=port))
    assert not isinstance(error, BrokerRefused), error
    assert "cannot reach RabbitMQ" in str(error)
    assert took < 4.0 + 1.5, took
