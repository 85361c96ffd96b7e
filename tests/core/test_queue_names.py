"""Queue names polyq refuses before any broker sees them (issue 17, names that
collide or hang): control and other unprintable characters, leading or trailing
spaces, empty names; refused when sending and when a worker is built."""

from __future__ import annotations

import time
import uuid

import pytest

from polyq import Polyq
from polyq.exceptions import ConfigurationError, InvalidQueueName
from polyq.queues import check_queue_name
from polyq.worker import Worker


def _app() -> Polyq:
    name = f"memory://{uuid.uuid4().hex}"
    return Polyq("names", broker=name, backend=name)


BAD = [
    "bad\nname",
    "tab\there",
    "nul\x00",
    "bell\x07",
    "zero\u200bwidth",
    "rtl\u202emark",
    "line\u2028sep",
    "payments ",
    " payments",
    "",
]


@pytest.mark.parametrize("name", BAD)
def test_unprintable_and_padded_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidQueueName) as info:
        check_queue_name(name)
    assert repr(name) in str(info.value) or not name
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["celery", "billing.high", "billing-high", "café", "a b"])
def test_ordinary_names_pass(name: str) -> None:
    assert check_queue_name(name) == name


def test_non_string_and_overlong_names_are_refused() -> None:
    with pytest.raises(InvalidQueueName, match="must be a string"):
        check_queue_name(b"celery")
    with pytest.raises(InvalidQueueName, match="256 characters"):
        check_queue_name("q" * 256)


def test_sending_to_a_name_with_a_newline_fails_at_once() -> None:
    app = _app()

    @app.task
    def noop() -> None:
        return None

    started = time.monotonic()
    with pytest.raises(InvalidQueueName, match=r"U\+000A \(a control character"):
        noop.apply_async(queue="jobs\nurgent")
    with pytest.raises(InvalidQueueName, match="ends with a space"):
        app.send_task("noop", queue="payments ")
    assert time.monotonic() - started < 1.0
    assert app.transport.size("jobs\nurgent") == 0


def test_a_worker_refuses_such_a_queue_before_starting() -> None:
    app = _app()
    with pytest.raises(InvalidQueueName, match="unprintable"):
        Worker(app, queues=["ok", "tab\tq"], install_signal_handlers=False)
    with pytest.raises(InvalidQueueName, match="empty"):
        Worker(app, queues=["ok", ""], install_signal_handlers=False)
