"""``memory://``: an in-process result store, and the reference backend to read first.

URL
    ``memory://`` or ``memory://<name>``: every backend with the same name in one
    process shares one store (the worker's threads and the caller see the same
    results); different names are different stores.

Design
    A :class:`MemoryStore` holds two dicts, values and sets, each entry paired with
    its monotonic expiry time (``None``: no expiry). One condition variable guards
    both: ``set`` notifies it, so :meth:`MemoryResultBackend.wait` sleeps until a
    write instead of polling. Expired entries are ignored by every read and deleted
    lazily on the next write to the key, or all at once by ``cleanup``.
    ``set_state`` keeps a final state's mark as a value of its own under
    :func:`~polyq.backend.final_mark`, checked and written under the same lock.

    The stores live in a module-level registry by name. That is deliberate: the
    store *is* the result server, so it outlives each backend instance, as a Redis
    server outlives its clients. A forked child starts with no stores: an
    in-process store cannot be shared between processes.

Capabilities
    push ``wait`` (woken by ``set``); not durable (the store dies with the process).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from polyq.backend import BackendCapabilities, ResultBackend, final_mark

__all__ = ["MemoryResultBackend", "MemoryStore"]

T = TypeVar("T")


def _expiry(ttl: float | None) -> float | None:
    return None if ttl is None else time.monotonic() + ttl


class MemoryStore:
    """The shared state of one ``memory://<name>`` result store. Thread-safe."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.values: dict[str, tuple[bytes, float | None]] = {}
        self.sets: dict[str, tuple[set[str], float | None]] = {}

    @staticmethod
    def live(table: dict[str, tuple[T, float | None]], key: str) -> T | None:
        """The entry under ``key`` unless it has expired. Caller holds ``cond``."""
        entry = table.get(key)
        if entry is None or (entry[1] is not None and entry[1] <= time.monotonic()):
            return None
        return entry[0]


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> MemoryStore:
    name = urlsplit(url).netloc
    with _stores_lock:
        return _stores.setdefault(name, MemoryStore())


def _forget_stores_after_fork() -> None:
    # A lock held by another thread at fork time would stay locked in the child.
    global _stores_lock
    _stores_lock = threading.Lock()
    _stores.clear()


os.register_at_fork(after_in_child=_forget_stores_after_fork)


class MemoryResultBackend(ResultBackend):
    """The in-process result store; see the module docstring."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        push_wait=True, durable=False, max_chord_size=None
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._store = _store_for(url)

    def get(self, key: str) -> bytes | None:
        """The live value under ``key``, or ``None``."""
        with self._store.cond:
            return self._store.live(self._store.values, key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Live values of ``keys``, read under one lock."""
        with self._store.cond:
            found = {key: self._store.live(self._store.values, key) for key in keys}
        return {key: value for key, value in found.items() if value is not None}

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` and wake every waiter."""
        self.set_many([(key, value)], ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        """Store every item under one lock and wake every waiter."""
        expires = _expiry(ttl)
        with self._store.cond:
            for key, value in items:
                self._store.values[key] = (bytes(value), expires)
            self._store.cond.notify_all()

    def delete(self, keys: Sequence[str]) -> None:
        """Remove values and sets under ``keys``."""
        with self._store.cond:
            for key in keys:
                self._store.values.pop(key, None)
                self._store.sets.pop(key, None)

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        """Add ``member`` to the set ``key`` (a fresh set if it expired); return its size."""
        with self._store.cond:
            members = self._store.live(self._store.sets, key)
            if members is None:
                members, expires = set(), None
            else:
                expires = self._store.sets[key][1]
            members.add(member)
            # A ttl restarts the set's expiry; no ttl keeps the one it had.
            self._store.sets[key] = (members, expires if ttl is None else _expiry(ttl))
            return len(members)

    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value`` unless a live one exists; whether this call stored it."""
        with self._store.cond:
            if self._store.live(self._store.values, key) is not None:
                return False
            self._store.values[key] = (bytes(value), _expiry(ttl))
            self._store.cond.notify_all()
            return True

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        """Store a state unless a live final mark (kept under :func:`final_mark`, with
        the state's expiry) is there; check and write under the store's one lock."""
        mark = final_mark(key)
        expires = _expiry(ttl)
        with self._store.cond:
            if self._store.live(self._store.values, mark) is not None:
                return False
            self._store.values[key] = (bytes(value), expires)
            if final:
                self._store.values[mark] = (b"1", expires)
            self._store.cond.notify_all()
            return True

    def wait(self, key: str, timeout: float) -> bytes | None:
        """Sleep until ``key`` is set (woken by ``set``) or ``timeout`` passes."""
        with self._store.cond:
            self._store.cond.wait_for(
                lambda: self._store.live(self._store.values, key) is not None, timeout
            )
            return self._store.live(self._store.values, key)

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Live keys (values and sets) starting with ``prefix``, sorted."""
        now = time.monotonic()
        with self._store.cond:
            found = {
                key
                for table in (self._store.values, self._store.sets)
                for key, (_, expires) in table.items()
                if key.startswith(prefix) and (expires is None or expires > now)
            }
        return sorted(found)[:limit]

    def cleanup(self) -> int:
        """Delete every expired value and set now."""
        now = time.monotonic()
        removed = 0
        with self._store.cond:
            for table in (self._store.values, self._store.sets):
                expired = [k for k, (_, exp) in table.items() if exp is not None and exp <= now]
                for key in expired:
                    del table[key]
                removed += len(expired)
        return removed
