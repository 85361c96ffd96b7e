"""The publish retry policy against polyq's errors: what it retries, what it does
not, and how long a producer waits before it hears that the broker is away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from polyq import Polyq
from polyq.exceptions import BrokerError, BrokerRefused


@pytest.fixture
def app() -> Iterator[Polyq]:
    app = Polyq("publish-errors", broker="memory://", backend="memory://")
    yield app
    app.close()


def _failing(app: Polyq, error: BrokerError, times: int | None = None) -> list[float]:
    """Make the app's transport raise ``error`` (``times`` times, else always);
    return the list of call times it fills."""
    calls: list[float] = []
    real = app.transport.publish

    def publish(messages: Any, **kwargs: Any) -> None:
        calls.append(time.monotonic())
        if times is None or len(calls) <= times:
            raise error
        real(messages, **kwargs)

    app.transport.publish = publish  # type: ignore[method-assign]
    return calls


def test_a_refusal_is_raised_at_once_without_retry(app: Polyq) -> None:
    calls = _failing(app, BrokerRefused("wrong password"))
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="wrong password"):
        app.send_task("t", (1,))
    assert len(calls) == 1
    assert time.monotonic() - started < 0.5


def test_connection_errors_are_retried_under_the_policy(app: Polyq) -> None:
    calls = _failing(app, BrokerError("connection reset"), times=2)
    app.send_task("t", (1,))
    assert len(calls) == 3
    assert app.transport.size("celery") == 1


def test_retries_stop_after_broker_connection_timeout(app: Polyq) -> None:
    app.conf.broker_connection_timeout = 1.0
    calls = _failing(app, BrokerError("down"))
    started = time.monotonic()
    with pytest.raises(BrokerError, match="down"):
        app.send_task(
            "t",
            (1,),
            retry_policy={
                "max_retries": 100,
                "interval_start": 0.3,
                "interval_step": 0.0,
                "interval_max": 0.3,
            },
        )
    took = time.monotonic() - started
    assert 0.6 <= took < 2.0, took
    assert 3 <= len(calls) <= 5


def test_a_policy_timeout_overrides_it(app: Polyq) -> None:
    app.conf.broker_connection_timeout = 0.2
    calls = _failing(app, BrokerError("down"), times=4)
    app.send_task(
        "t",
        (1,),
        retry_policy={
            "max_retries": 10,
            "interval_start": 0.1,
            "interval_step": 0.0,
            "timeout": None,
        },
    )
    assert len(calls) == 5
