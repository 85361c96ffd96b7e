"""ETAs on a broker that cannot delay (``Capabilities.max_delay == 0``) or can delay
only briefly: the worker holds the early message itself (its lease kept) until its
ETA, outside the prefetch window, instead of bouncing it through the broker."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from polyq import Polyq, registry
from polyq.exceptions import BrokerError
from polyq.testing.worker import start_worker
from polyq.transport import Capabilities, Delivery, OutgoingMessage
from polyq_transports.memory import MemoryTransport


class _CountingTransport(MemoryTransport):
    """The memory broker, declaring a shorter ``max_delay`` and refusing any delay
    beyond it; it counts what the worker asks of it."""

    calls: ClassVar[collections.Counter[str]] = collections.Counter()
    received: ClassVar[collections.Counter[str]] = collections.Counter()

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        limit = self.capabilities.max_delay or 0.0
        for m in messages:
            if m.delay > limit:
                raise BrokerError(f"this broker cannot delay {m.delay}s (max {limit}s)")
        type(self).calls["publish"] += len(messages)
        super().publish(messages, **kwargs)

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        deliveries = super().receive(queues, max_messages, wait)
        for d in deliveries:
            type(self).received[d.message_id] += 1
        return deliveries

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        if delay > (self.capabilities.max_delay or 0.0):
            raise BrokerError(f"this broker cannot delay {delay}s")
        type(self).calls["nack"] += 1
        super().nack(delivery, delay)


class NoDelayTransport(_CountingTransport):
    capabilities: ClassVar[Capabilities] = dataclasses.replace(
        MemoryTransport.capabilities, max_delay=0
    )
    calls: ClassVar[collections.Counter[str]] = collections.Counter()
    received: ClassVar[collections.Counter[str]] = collections.Counter()


class ShortDelayTransport(_CountingTransport):
    capabilities: ClassVar[Capabilities] = dataclasses.replace(
        MemoryTransport.capabilities, max_delay=0.2
    )
    calls: ClassVar[collections.Counter[str]] = collections.Counter()
    received: ClassVar[collections.Counter[str]] = collections.Counter()


SCHEMES = {"nodelay": NoDelayTransport, "shortdelay": ShortDelayTransport}


@pytest.fixture(autouse=True)
def _schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve = registry.resolve

    def patched(url: str, group: str) -> tuple[type[Any], str]:
        scheme = url.split(":", 1)[0]
        if group == registry.TRANSPORT_GROUP and scheme in SCHEMES:
            return SCHEMES[scheme], "memory" + url[len(scheme) :]
        return resolve(url, group)

    monkeypatch.setattr(registry, "resolve", patched)
    for cls in SCHEMES.values():
        cls.calls.clear()
        cls.received.clear()


def _app(scheme: str) -> tuple[Polyq, dict[str, float]]:
    name = f"eta-{uuid.uuid4().hex[:8]}"
    # A lease shorter than the waits below: only the lease keeper keeps the held
    # messages from being delivered again.
    app = Polyq(
        "eta",
        broker_url=f"{scheme}://{name}?visibility_timeout=1",
        result_backend=f"memory://{name}",
    )
    ran: dict[str, float] = {}
    lock = threading.Lock()

    @app.task(name="t.stamp")
    def stamp(tag: str) -> str:
        with lock:
            ran[tag] = time.time()
        return tag

    return app, ran


def _wait_for(ran: dict[str, float], tags: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not tags <= set(ran) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tags <= set(ran), f"not run: {tags - set(ran)}"


def test_eta_task_runs_on_time_without_a_nack_storm() -> None:
    app, ran = _app("nodelay")
    with start_worker(app, concurrency=1) as worker:
        eta = time.time() + 2.5
        result = app.tasks["t.stamp"].apply_async(("late",), eta=eta)
        _wait_for(ran, {"late"}, 10)
        assert result.get(timeout=5) == "late"
        assert worker.backlog.scheduled_count() == 0
    assert eta - 0.06 <= ran["late"] < eta + 0.5
    # One publish (the send), no bounce through the broker, received once although
    # the wait was longer than the lease: the lease keeper kept it.
    assert NoDelayTransport.calls == {"publish": 1}
    assert sum(NoDelayTransport.received.values()) == 1


def test_held_eta_messages_leave_the_prefetch_window_to_ready_work() -> None:
    app, ran = _app("nodelay")
    stamp = app.tasks["t.stamp"]
    with start_worker(app, concurrency=1, prefetch_multiplier=1) as worker:
        later = time.time() + 2.0
        for n in range(5):
            stamp.apply_async((f"eta{n}",), eta=later)
        deadline = time.monotonic() + 5
        while worker.backlog.scheduled_count() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.backlog.scheduled_count() == 5
        sent = time.time()
        stamp.delay("now")
        _wait_for(ran, {"now"}, 5)
        assert ran["now"] - sent < 1.0  # not behind the five waiting for their ETA
        _wait_for(ran, {f"eta{n}" for n in range(5)}, 10)
    assert all(ran[f"eta{n}"] >= later - 0.06 for n in range(5))
    assert NoDelayTransport.calls == {"publish": 6}


def test_beyond_the_hold_limit_messages_go_back_without_a_busy_loop() -> None:
    app, ran = _app("nodelay")
    stamp = app.tasks["t.stamp"]
    with start_worker(app, concurrency=1, eta_hold_limit=2):
        eta = time.time() + 3.0
        for n in range(4):
            stamp.apply_async((f"eta{n}",), eta=eta)
        _wait_for(ran, {f"eta{n}" for n in range(4)}, 15)
    assert all(ran[f"eta{n}"] >= eta - 0.06 for n in range(4))
    # Two held, two given back: a receive that brings back only those pauses a
    # second, so about two nacks per second of the wait, not thousands.
    assert NoDelayTransport.calls["nack"] <= 20


def test_a_broker_with_a_tiny_max_delay_is_not_hopped_through() -> None:
    app, ran = _app("shortdelay")
    with start_worker(app, concurrency=1):
        eta = time.time() + 2.0
        app.tasks["t.stamp"].apply_async(("late",), eta=eta)
        _wait_for(ran, {"late"}, 10)
    assert eta - 0.06 <= ran["late"] < eta + 0.5
    # Sent with a 0.2 s delay (all the broker holds), then held by the worker:
    # not sent back every 0.2 s.
    assert ShortDelayTransport.calls == {"publish": 1}
    assert sum(ShortDelayTransport.received.values()) == 1


def test_shutdown_gives_held_eta_messages_back() -> None:
    app, ran = _app("nodelay")
    with start_worker(app, concurrency=1) as worker:
        result = app.tasks["t.stamp"].apply_async(("late",), countdown=60)
        deadline = time.monotonic() + 5
        while worker.backlog.scheduled_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.backlog.scheduled_count() == 1
    assert "late" not in ran
    assert NoDelayTransport.calls["nack"] == 1
    assert app.transport.size(app.conf.task_default_queue) == 1
    assert result.id
