"""The result-store contract: what every result backend plugin promises the core.

A result backend is a small key-value store with expiry, plus two atomic
primitives the core builds chords, locks and idempotency on, and a third,
:meth:`ResultBackend.set_state`, that keeps a task's final state from going
backwards (with a default built on the second). It stores opaque
``bytes``; the core owns the record format (states, results, tracebacks, meta:
:mod:`polyq.result`). Every point below is checked by the conformance suite.

Abstract methods are the minimum every plugin implements; the others have defaults
that are correct for any store (built on the abstract ones, or a no-op where the
store needs nothing), and a plugin overrides them to do better.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from polyq.capabilities import BackendCapabilities

__all__ = ["FINAL_MARK_SUFFIX", "BackendCapabilities", "ResultBackend", "final_mark"]

#: Appended to a key to name its final mark (see :func:`final_mark`).
FINAL_MARK_SUFFIX = "\x1ffinal"


def final_mark(key: str) -> str:
    """The key under which a store may record that ``key`` holds a final state.

    :meth:`ResultBackend.set_state`'s default keeps the final value there; the memory
    and Redis backends keep a flag there. Whoever deletes a state deletes its mark
    too (``AsyncResult.forget`` does), so a forgotten task id can be used again.
    The separator (ASCII unit separator) keeps it apart from any task id."""
    return key + FINAL_MARK_SUFFIX


class ResultBackend(abc.ABC):
    """A result-store plugin. One instance per process, safe to use from several
    threads; never carried across ``fork`` (the core builds a new one per child).

    ``ttl`` is in seconds; ``None`` keeps the value until deleted. A read never
    returns a value whose ttl has passed, however late the store purges it.
    """

    #: Declared by each plugin, every field spelled out (the defaults claim
    #: nothing); see :class:`~polyq.capabilities.BackendCapabilities`.
    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities()

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the value stored under ``key``; ``None`` if absent or expired."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (replacing any), durable once returned,
        and wake every ``wait`` on ``key``."""

    @abc.abstractmethod
    def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` (and any set stored under them); absent keys are fine."""

    @abc.abstractmethod
    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        """Atomically add ``member`` to the set ``key`` and return the set's size
        afterwards. Adding a member twice does not grow the set: this is how a
        chord counts each header task once, even when it is redelivered."""

    @abc.abstractmethod
    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (or expired); return whether
        this call stored it. Exactly one of many concurrent callers wins."""

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        """Store a task state under ``key`` unless a final one is already there;
        return whether this call stored it.

        ``final`` says whether ``value`` is a final state (``SUCCESS``, ``FAILURE``,
        ``REVOKED``). Once a final state is stored under ``key``, every later
        ``set_state`` on it stores nothing and returns ``False``, final or not, until
        the key is deleted (with its :func:`final_mark`) or expires: a stale
        ``RETRY`` or ``STARTED`` of a duplicate execution cannot hide the outcome,
        and of two final states the first stored wins. Before that it is
        :meth:`set` (it replaces non-final states and wakes every ``wait``).

        Atomicity (what a plugin's override must guarantee): the check and the
        write are one atomic step against every concurrent ``set_state`` on the key,
        from any process; when a final write races any number of non-final ones,
        the final state is what remains, and of racing final writes exactly one
        returns ``True``. A key is written either with ``set_state`` or with
        :meth:`set`, not both (the core writes task states only with this method).

        The default, for stores that offer nothing better, is built on
        :meth:`set_if_absent` (atomic: exactly one final write wins) and keeps the
        final value a second time under :func:`final_mark`. A non-final write
        checks the mark, writes, then checks again and puts the final value back
        if a final write landed meanwhile: what stays stored is always the final
        state, but a reader may for an instant see the stale state before it is
        put back. Bundled stores override it with a single atomic step.
        """
        mark = final_mark(key)
        if final:
            if not self.set_if_absent(mark, value, ttl):
                return False
            self.set(key, value, ttl)
            return True
        if self.get(mark) is not None:
            return False
        self.set(key, value, ttl)
        winner = self.get(mark)
        if winner is None:
            return True
        self.set(key, winner, ttl)  # a final write raced this one: put it back
        return False

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values for the ``keys`` that are present (one round trip where possible)."""
        found = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        """``set`` every ``(key, value)`` (pipelined where possible)."""
        for key, value in items:
            self.set(key, value, ttl)

    def wait(self, key: str, timeout: float) -> bytes | None:
        """Return the value under ``key`` as soon as it is set, waiting up to
        ``timeout`` seconds; ``None`` on timeout. The default polls with a
        backoff from 5 ms to 0.5 s; stores with notifications override it."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            value = self.get(key)
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 1.5, 0.5)

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Live keys starting with ``prefix`` (for listings such as revokes)."""
        return []

    def create_schema(self) -> None:
        """Create or upgrade the store's own storage (tables, indexes; ``polyq db
        init``), idempotent and safe while other processes use the store.

        Optional: the default, for stores that need no setup, does nothing."""

    def cleanup(self) -> int:
        """Delete expired values now (``polyq db cleanup``), for stores without
        native expiry; return how many were removed. Reads never see an expired
        value either way: this only reclaims space.

        Optional: the default, for stores that expire values themselves, removes
        nothing and returns 0."""
        return 0

    def close(self) -> None:
        """Release connections; idempotent."""

    def describe(self) -> str:
        """A one-line description for logs, with credentials redacted."""
        from polyq.url import redact

        return redact(self.url)

    def __enter__(self) -> ResultBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
