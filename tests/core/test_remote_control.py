"""Remote control across the trust boundary (issue 17): a command body is data from
the broker, so the worker checks every argument, refuses commands an operator turned
off, and stays as it was after a refusal.

The worker-side tests publish *forged* bodies straight to the transport (what
``redis-cli PUBLISH`` does), never through ``app.control``, whose own checks would
stop them first; they use only the public API of the old code too, so each one can
be run against it (``PYTHONPATH=/work/before``) and fails there.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from polyq import Polyq
from polyq.control import CONTROL_CHANNEL
from polyq.testing.worker import start_worker


@pytest.fixture
def app(memory_url: str) -> Iterator[Polyq]:
    app = Polyq("remote", broker_url=memory_url, result_backend=memory_url)

    @app.task(name="remote.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def forge(app: Polyq, command: str, timeout: float = 3.0, **arguments: Any) -> Any:
    """Publish a raw command body on the control channel, as ``redis-cli PUBLISH``
    would, and return the single worker's reply (``None`` if none came)."""
    ticket = uuid.uuid4().hex
    reply_to = "polyq.reply." + ticket
    body = {"command": command, "arguments": {**arguments, "reply_to": reply_to, "ticket": ticket}}
    with app.transport.subscribe(reply_to) as subscription:
        app.transport.broadcast(CONTROL_CHANNEL, json.dumps(body).encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = subscription.get(0.2)
            if raw is not None:
                return json.loads(raw)["reply"]
    return None


def error_of(reply: Any) -> str:
    assert isinstance(reply, dict) and "error" in reply, f"not refused: {reply!r}"
    return str(reply["error"])


# -- the findings -------------------------------------------------------------------------


def test_forged_pool_grow_by_minus_100_is_refused(app: Polyq) -> None:
    with start_worker(app, concurrency=2) as worker:
        error = error_of(forge(app, "pool_grow", n=-100))
        assert "n must be a whole number of pool slots" in error and "-100" in error
        assert worker.pool.concurrency == 2 and worker.concurrency == 2
        assert app.tasks["remote.add"].delay(1, 2).get(timeout=10) == 3


def test_pool_grow_is_bounded_by_the_setting_and_shrink_never_below_one(app: Polyq) -> None:
    app.conf.worker_remote_control_max_concurrency = 4
    with start_worker(app, concurrency=2) as worker:
        error = error_of(forge(app, "pool_grow", n=10))
        assert "from 1 to 4 (worker_remote_control_max_concurrency)" in error
        error = error_of(forge(app, "pool_grow", n=3))
        assert "above 4 (worker_remote_control_max_concurrency)" in error and "from 1 to 2" in error
        assert worker.pool.concurrency == 2
        assert forge(app, "pool_grow", n=2) == {"ok": "pool now 4"}
        assert "at its ceiling" in error_of(forge(app, "pool_grow", n=1))
        assert "from 1 to 3" in error_of(forge(app, "pool_shrink", n=4))
        assert worker.pool.concurrency == 4
        assert "must be a whole number" in error_of(forge(app, "pool_shrink", n="3"))
        assert forge(app, "pool_shrink", n=3) == {"ok": "pool now 1"}
        assert "none: it has one slot" in error_of(forge(app, "pool_shrink"))
        assert worker.pool.concurrency == 1


def test_forged_time_limit_of_a_hundredth_of_a_second_is_refused(app: Polyq) -> None:
    task = app.tasks["remote.add"]
    # Prefork: the one pool that enforces hard limits (the old code set it there).
    with start_worker(app, pool="prefork", concurrency=1):
        error = error_of(forge(app, "time_limit", task_name="remote.add", hard=0.01))
        assert "hard must be a number of seconds of at least 1" in error
        assert "worker_remote_control_min_time_limit" in error
        assert task.time_limit is None
        error = error_of(forge(app, "time_limit", task_name="remote.add", soft=10, hard=5))
        assert "soft (10) must be below hard (5)" in error
        assert task.soft_time_limit is None and task.time_limit is None
        assert forge(app, "time_limit", task_name="remote.add", soft=5, hard=10)["ok"]
        assert (task.soft_time_limit, task.time_limit) == (5.0, 10.0)


def test_a_lower_minimum_time_limit_can_be_allowed(app: Polyq) -> None:
    app.conf.worker_remote_control_min_time_limit = 0.5
    with start_worker(app, pool="solo"):
        assert forge(app, "time_limit", task_name="remote.add", soft=0.5)["ok"]
        assert "at least 0.5" in error_of(
            forge(app, "time_limit", task_name="remote.add", soft=0.1)
        )


def test_forged_rate_limit_that_parks_messages_is_refused(app: Polyq) -> None:
    add = app.tasks["remote.add"]
    with start_worker(app) as worker:
        for rate in ("1e-9/s", "-5/s", "0.5/h", "nan", 1e-9):
            error = error_of(forge(app, "rate_limit", task_name="remote.add", rate_limit=rate))
            assert "worker_remote_control_max_rate_interval" in error or "bad rate" in error
        assert add.rate_limit is None
        assert add.delay(2, 2).get(timeout=10) == 4  # not parked behind a bucket
        assert forge(app, "rate_limit", task_name="remote.add", rate_limit="2/h")["ok"]
        assert add.rate_limit == "2/h"
        assert forge(app, "rate_limit", task_name="remote.add", rate_limit=None)["ok"]
        assert add.rate_limit is None
        assert worker.queues == ["celery"]


@pytest.mark.parametrize(
    "queue",
    ["celery.dlq", "celery-dlq", "celery.delay.03", "jobs-delay", "amq.gen", "polyq.events"],
)
def test_add_consumer_refuses_dead_letter_delay_and_internal_queues(app: Polyq, queue: str) -> None:
    with start_worker(app) as worker:
        error = error_of(forge(app, "add_consumer", queue=queue))
        assert f"queue {queue!r} is refused" in error
        assert worker.queues == ["celery"]


@pytest.mark.parametrize("queue", ["", "a\nb", "tab\there", "x" * 300, 7, None])
def test_add_consumer_refuses_malformed_names(app: Polyq, queue: Any) -> None:
    with start_worker(app) as worker:
        assert "queue" in error_of(forge(app, "add_consumer", queue=queue))
        assert worker.queues == ["celery"]


def test_forged_revoke_with_bad_ids_is_refused(app: Polyq) -> None:
    with start_worker(app) as worker:
        assert "ids must be a list of 1 to 10000" in error_of(forge(app, "revoke", ids=42))
        assert "ids must be a list" in error_of(forge(app, "revoke", ids=["a"] * 10_001))
        assert "task id" in error_of(forge(app, "revoke", ids=[{"x": 1}]))
        error = error_of(forge(app, "revoke", ids=["x"], terminate=True, signal="SIG_IGN"))
        assert "signal must name a signal" in error
        assert worker.revocations.ids() == []


def test_shutdown_turned_off_is_refused_with_one_warning(
    app: Polyq, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.worker_remote_control_commands = ["ping", "stats", "revoke"]
    with start_worker(app) as worker:
        caplog.set_level(logging.WARNING, logger="polyq.worker")
        caplog.clear()
        for command, arguments in (("shutdown", {}), ("pool_grow", {"n": 1})):
            error = error_of(forge(app, command, **arguments))
            assert f"command {command!r} is turned off" in error
            assert "worker_remote_control_commands" in error
        time.sleep(0.5)  # the old code stopped 0.2 s after its reply
        assert not worker.stopping.is_set() and worker.pool.concurrency == 2
        refusals = [r for r in caplog.records if "worker_remote_control_commands" in r.message]
        assert [r.levelno for r in refusals] == [logging.WARNING] * 2
        assert forge(app, "ping") == {"ok": "pong"}


def test_allow_list_from_the_environment_form(app: Polyq) -> None:
    app.conf.worker_remote_control_commands = "ping, stats"
    with start_worker(app):
        assert forge(app, "ping") == {"ok": "pong"}
        assert "turned off" in error_of(forge(app, "add_consumer", queue="extra"))


def test_a_malformed_allow_list_refuses_everything(app: Polyq) -> None:
    app.conf.worker_remote_control_commands = 3
    with start_worker(app) as worker:
        assert "worker_remote_control_commands=3" in error_of(forge(app, "shutdown"))
        assert not worker.stopping.is_set()


def test_remote_control_off_means_no_listener_but_revokes_still_work(app: Polyq) -> None:
    app.conf.worker_enable_remote_control = False
    add = app.tasks["remote.add"]
    with start_worker(app) as worker:
        assert forge(app, "ping", timeout=1.0) is None
        assert forge(app, "shutdown", timeout=1.0) is None
        assert not worker.stopping.is_set()
        later = add.apply_async((1, 1), countdown=4)
        app.control.revoke(later.id)  # durable: read from the result backend
        deadline = time.monotonic() + 5
        while later.id not in worker.revocations.ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert later.id in worker.revocations.ids()


def test_replies_only_go_to_reply_channels(app: Polyq) -> None:
    seen: list[bytes] = []
    with start_worker(app), app.transport.subscribe("polyq.events") as events:
        body = {"command": "ping", "arguments": {"reply_to": "polyq.events", "ticket": "t"}}
        app.transport.broadcast(CONTROL_CHANNEL, json.dumps(body).encode())
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            raw = events.get(0.2)
            if raw is not None and b'"ticket": "t"' in raw:
                seen.append(raw)
        assert seen == []


def test_client_refuses_bad_arguments_before_sending(app: Polyq) -> None:
    with app.transport.subscribe(CONTROL_CHANNEL) as channel:
        with pytest.raises(ValueError, match="n must be a whole number"):
            app.control.pool_grow(-100)
        with pytest.raises(ValueError, match="at least 1"):
            app.control.time_limit("remote.add", hard=0.01)
        with pytest.raises(ValueError, match="worker_remote_control_max_rate_interval"):
            app.control.rate_limit("remote.add", "1e-9/s")
        with pytest.raises(ValueError, match="dead-letter"):
            app.control.add_consumer("celery.dlq")
        with pytest.raises(ValueError, match="signal"):
            app.control.revoke("some-id", terminate=True, signal="NOPE")
        with pytest.raises(ValueError, match="n must be"):
            app.control.broadcast("pool_shrink", {"n": 0})
        with pytest.raises(ValueError, match="task id"):
            app.control.revoke(["ok-id", "bad\x00id"])
        assert channel.get(0.3) is None  # nothing was sent
    assert app.control.revoked() == []  # nor stored


def test_a_large_revoke_is_sent_in_several_broadcasts(app: Polyq) -> None:
    ids = [f"id-{i}" for i in range(10_001)]
    with start_worker(app) as worker:
        app.control.revoke(ids)
        deadline = time.monotonic() + 10
        while len(worker.revocations.ids()) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(worker.revocations.ids()) == set(ids)
