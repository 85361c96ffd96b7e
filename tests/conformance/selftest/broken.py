"""Deliberately broken plugins: each breaks one promise, and the conformance suite
must notice. They wrap the memory plugins, the reference implementations."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from polyq.backend import final_mark
from polyq.exceptions import MessageTooLarge
from polyq.transport import (
    Capabilities,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Transport,
)
from polyq_backends.memory import MemoryResultBackend
from polyq_transports.memory import MemoryTransport


class IgnoresPriority(MemoryTransport):
    """Declares priority but stores every message at priority 0."""

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        super().publish([dataclasses.replace(m, priority=0) for m in messages], **kwargs)


class RedeliversEarly(MemoryTransport):
    """Ends leases after a third of the visibility timeout."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.visibility_timeout /= 3


class LosesNacked(MemoryTransport):
    """Treats a nack as an ack: the message is gone."""

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        self.ack([delivery])


class HoldsEtaInProducer(MemoryTransport):
    """Keeps delayed messages in the producer's memory (a timer per message) and
    hands them to the broker when due, as Celery's workers do with ETA tasks: another
    instance cannot see them, and they die with the producer."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._timers: dict[threading.Timer, OutgoingMessage] = {}
        self._eta: dict[str, float] = {}

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        now = [m for m in messages if m.delay <= 0]
        if now:
            super().publish(now, **kwargs)
        for m in messages:
            if m.delay > 0:
                ready = dataclasses.replace(m, delay=0.0)
                timer = threading.Timer(m.delay, self._release, [ready])
                self._timers[timer] = m
                self._eta[m.message_id] = time.time() + m.delay
                timer.start()

    def _release(self, message: OutgoingMessage) -> None:
        super().publish([message])

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        held = [m for t, m in self._timers.items() if t.is_alive() and m.queue == queue]
        listed = [
            ScheduledMessage(m.queue, m.message_id, dict(m.headers), self._eta[m.message_id])
            for m in held
        ]
        return sorted(listed, key=lambda s: s.eta)[:limit]

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        super().close()


class DropsHeaders(MemoryTransport):
    """Sends the body and id, but not the headers."""

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        super().publish([dataclasses.replace(m, headers={}) for m in messages], **kwargs)


class SizeLimited(MemoryTransport):
    """Correct: a 64 KiB limit, declared and enforced (exercises the size tests)."""

    capabilities: ClassVar[Capabilities] = dataclasses.replace(
        MemoryTransport.capabilities, max_message_size=64 * 1024
    )

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        limit = self.capabilities.max_message_size or 0
        for m in messages:
            size = len(m.body) + sum(len(k) + len(v.encode()) for k, v in m.headers.items())
            if size > limit:
                raise MessageTooLarge(f"message {m.message_id} is {size} bytes; limit {limit}")
        super().publish(messages, **kwargs)


class IgnoresSizeLimit(MemoryTransport):
    """Declares a 64 KiB limit but sends larger messages anyway."""

    capabilities: ClassVar[Capabilities] = SizeLimited.capabilities


class KeepsDeletedQueue(MemoryTransport):
    """Implements delete_queue as a no-op: the queue's messages stay behind."""

    def delete_queue(self, queue: str) -> None:
        pass


class ForgetsCapabilities(MemoryTransport):
    """Declares no capabilities of its own (the contract's defaults, which claim
    nothing), as a plugin that forgot to would."""

    capabilities: ClassVar[Capabilities] = Transport.capabilities


class CountsRepeats(MemoryResultBackend):
    """Counts every add_to_set call, not distinct members (a chord would fire early)."""

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        return super().add_to_set(key, f"{member}#{time.monotonic_ns()}", ttl)


class ServesExpired(MemoryResultBackend):
    """Ignores ttl: values never expire."""

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        super().set(key, value)

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        super().set_many(items)


class OverwritesFinalStates(MemoryResultBackend):
    """``set_state`` is a plain ``set``: a late RETRY hides the FAILURE (the old code)."""

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        self.set(key, value, ttl)
        return True


class ChecksThenWritesState(MemoryResultBackend):
    """``set_state`` checks for a final state, then writes, in two steps: a final
    state landing in between is overwritten, and racing final states all win."""

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        if self.get(final_mark(key)) is not None:
            return False
        time.sleep(0.001)  # the gap between a read and a write of a remote store
        self.set(key, value, ttl)
        if final:
            self.set(final_mark(key), b"1", ttl)
        return True
