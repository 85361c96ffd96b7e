"""The Redis result backend: values with native expiry, pub/sub-woken waits.

The same URLs and connection options as the Redis transport (both connect through
:mod:`polyq_clients.redis`), plus ``namespace`` (key and channel prefix, default
``"polyq"``; Celery's ``global_keyprefix`` is an alias). Use another database than
the broker's (broker ``/0``, results ``/1``). How values, sets and waits map onto
Redis, and why: ``docs/design/redis.md``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import redis

from polyq.backend import BackendCapabilities, ResultBackend, final_mark
from polyq.url import query_options, redact
from polyq_clients.redis import connect, translate_errors

__all__ = ["RedisResultBackend"]

logger = logging.getLogger(__name__)

#: Longest a wait trusts pub/sub alone before reading the key again.
_RECHECK = 2.0
#: Values up to this size travel in the notification itself, saving the waiter a GET.
_INLINE_MAX = 64 * 1024
_WITH_VALUE, _WITHOUT_VALUE = b"\x01", b"\x00"

#: Keys per ``MGET``/``DEL`` of a bulk operation: one command of 100,000 keys would
#: hold Redis (single-threaded) for the whole reply; chunks let others in between.
_BULK = 10_000


#: ``set_state``: KEYS = value, final mark; ARGV = value, px ("" for none, "0" for
#: already expired), "1" if final, channel, notification. Nothing once the mark is
#: there; else the value (and for a final state the mark, with the same expiry)
#: and the notification, in one atomic step.
_SET_STATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) return 1 end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
  if ARGV[3] == '1' then redis.call('SET', KEYS[2], '1') end
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if ARGV[3] == '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


def _px(ttl: float) -> int:
    return max(1, round(ttl * 1000))


class _Waiter:
    __slots__ = ("fired", "subscribed", "value")

    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.fired = threading.Event()
        #: The value the notification carried, if it carried one.
        self.value: bytes | None = None


class _Notifier:
    """One pub/sub connection and the thread that reads it for every ``wait``."""

    def __init__(self, client: redis.Redis, home: str, url: str) -> None:
        self._client = client
        self._home = home
        pubsub = self._pubsub = client.pubsub()
        self._url = url
        # Guards the waiter tables and every SUBSCRIBE/UNSUBSCRIBE sent, so the
        # commands reach Redis in the order the tables change.
        self._lock = threading.Lock()
        self._waiters: dict[bytes, list[_Waiter]] = {}
        #: SUBSCRIBEs sent per channel and not yet confirmed.
        self._pending: dict[bytes, int] = {}
        self._closed = threading.Event()
        with translate_errors(url, "subscribe for result notifications"):
            # A private channel keeps the connection subscribed when no wait is.
            pubsub.subscribe(home)
        self._thread = threading.Thread(target=self._run, name="polyq-redis-results", daemon=True)
        self._thread.start()

    def watch(self, channel: bytes) -> _Waiter:
        waiter = _Waiter()
        with self._lock:
            waiters = self._waiters.setdefault(channel, [])
            waiters.append(waiter)
            if len(waiters) == 1:
                self._pending[channel] = self._pending.get(channel, 0) + 1
                with translate_errors(self._url, "subscribe for a result"):
                    self._pubsub.subscribe(channel)
            elif not self._pending.get(channel):
                waiter.subscribed.set()
        return waiter

    def unwatch(self, channel: bytes, waiter: _Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(channel, None)
                with contextlib.suppress(redis.RedisError):
                    self._pubsub.unsubscribe(channel)

    def _run(self) -> None:
        broken = False
        while not self._closed.is_set():
            try:
                reply = self._pubsub.get_message(timeout=1.0)
            except Exception as exc:  # a dead socket surfaces as odd types too
                if self._closed.is_set():
                    return
                if not broken:  # once per outage, not every retry
                    logger.warning("result notifications from %s interrupted: %s", self._url, exc)
                broken = True
                with self._lock:  # let every wait re-read its key
                    for waiters in self._waiters.values():
                        for waiter in waiters:
                            waiter.subscribed.set()
                            waiter.fired.set()
                self._closed.wait(0.2)
                continue
            if broken:
                broken = False
                logger.info("result notifications from %s restored", self._url)
            if reply is None:
                continue
            kind, channel = reply["type"], reply["channel"]
            with self._lock:
                if kind == "subscribe" and channel in self._pending:
                    self._pending[channel] -= 1
                    if self._pending[channel] <= 0:
                        del self._pending[channel]
                        for waiter in self._waiters.get(channel, ()):
                            waiter.subscribed.set()
                elif kind == "message":
                    data = reply["data"]
                    value = data[1:] if data[:1] == _WITH_VALUE else None
                    for waiter in self._waiters.get(channel, ()):
                        waiter.value = value
                        waiter.fired.set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(redis.RedisError):
            self._client.publish(self._home, b"")  # wakes the reader now
        self._thread.join(timeout=2.0)
        with contextlib.suppress(redis.RedisError, OSError):
            self._pubsub.close()


class RedisResultBackend(ResultBackend):
    """The Redis result store (``redis://``, ``rediss://``, ``redis+sentinel://``)."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        push_wait=True,
        durable=True,
        # Bulk reads and deletes go _BULK keys per command: no size limit of its own.
        max_chord_size=None,
    )

    def __init__(self, url: str, **options: Any) -> None:
        options = {**options, **query_options(url)}
        super().__init__(url, **options)
        namespace = str(options.get("namespace", options.get("global_keyprefix", "polyq")))
        self.namespace = namespace.rstrip(":_") or "polyq"
        client, self.db = connect(url, options)
        # Typed loosely on purpose: redis-py annotates every reply as a union of all
        # shapes, while with decode_responses=False ours are known.
        self._client: Any = client
        self._values = f"{self.namespace}:k:"
        self._sets = f"{self.namespace}:s:"
        self._channels = f"{self.namespace}:{self.db}:result:"
        self._notifier: _Notifier | None = None
        self._notifier_lock = threading.Lock()
        self._set_state = self._client.register_script(_SET_STATE)

    def _errors(self, what: str) -> translate_errors:
        return translate_errors(self.url, what)

    def get(self, key: str) -> bytes | None:
        """``GET``; Redis never returns an expired key."""
        with self._errors(f"read result key {key!r}"):
            value: bytes | None = self._client.get(self._values + key)
        return value

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """``MGET`` of up to ``_BULK`` keys each, pipelined into one round trip."""
        if not keys:
            return {}
        names = [self._values + key for key in keys]
        with self._errors(f"read {len(keys)} result keys"):
            if len(names) <= _BULK:
                values = self._client.mget(names)
            else:
                pipe = self._client.pipeline(transaction=False)
                for start in range(0, len(names), _BULK):
                    pipe.mget(names[start : start + _BULK])
                values = [value for reply in pipe.execute() for value in reply]
        return {key: value for key, value in zip(keys, values, strict=True) if value is not None}

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """``SET`` (with ``PX`` for a ttl) and ``PUBLISH`` the key, in one round trip."""
        self.set_many([(key, value)], ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        """Every ``SET`` and ``PUBLISH`` pipelined into one round trip."""
        if not items:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value in items:
            if ttl is not None and ttl <= 0:
                pipe.delete(self._values + key)  # expired the moment it is written
                continue
            pipe.set(self._values + key, value, px=None if ttl is None else _px(ttl))
            pipe.publish(self._channels + key, self._notification(value, ttl))
        with self._errors(f"store {len(items)} result(s)"):
            pipe.execute()

    def delete(self, keys: Sequence[str]) -> None:
        """``DEL`` the values and sets under ``keys``."""
        if not keys:
            return
        names = [prefix + key for key in keys for prefix in (self._values, self._sets)]
        with self._errors(f"delete {len(keys)} result key(s)"):
            if len(names) <= _BULK:
                self._client.delete(*names)
                return
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(names), _BULK):
                pipe.delete(*names[start : start + _BULK])
            pipe.execute()

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        """``SADD`` + ``SCARD`` (+ ``PEXPIRE``) in one ``MULTI``; the set's size after."""
        name = self._sets + key
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(name, member)
        pipe.scard(name)
        if ttl is not None:
            if ttl <= 0:
                pipe.delete(name)
            else:
                pipe.pexpire(name, _px(ttl))
        with self._errors(f"add to result set {key!r}"):
            replies = pipe.execute()
        return int(replies[1])

    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """``SET NX``: true for exactly one of many concurrent callers."""
        name = self._values + key
        with self._errors(f"set result key {key!r} if absent"):
            if ttl is not None and ttl <= 0:
                return not self._client.exists(name)
            stored = self._client.set(name, value, nx=True, px=None if ttl is None else _px(ttl))
            if stored:
                self._client.publish(self._channels + key, self._notification(value, ttl))
        return bool(stored)

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        """One Lua script: nothing if the key's final mark (:func:`final_mark`, a flag
        with the state's expiry) is there, else ``SET`` (+ the mark) and ``PUBLISH``."""
        px = "" if ttl is None else "0" if ttl <= 0 else str(_px(ttl))
        keys = [self._values + key, self._values + final_mark(key)]
        flag = "1" if final else "0"
        args: list[bytes | str] = [value, px, flag, self._channels + key]
        args.append(self._notification(value, ttl))
        with self._errors(f"store the state under result key {key!r}"):
            return bool(self._set_state(keys=keys, args=args))

    @staticmethod
    def _notification(value: bytes, ttl: float | None) -> bytes:
        # Short-lived values are not inlined: a wait must never return an expired one.
        if len(value) <= _INLINE_MAX and (ttl is None or ttl >= 1.0):
            return _WITH_VALUE + value
        return _WITHOUT_VALUE

    def _notifications(self) -> _Notifier:
        with self._notifier_lock:
            if self._notifier is None:
                home = f"{self._channels}~listener:{uuid.uuid4().hex}"
                self._notifier = _Notifier(self._client, home, redact(self.url))
            return self._notifier

    def wait(self, key: str, timeout: float) -> bytes | None:
        """Subscribe to the key's channel, read it, then sleep until it is published."""
        deadline = time.monotonic() + timeout
        notifier = self._notifications()
        channel = (self._channels + key).encode()
        waiter = notifier.watch(channel)
        try:
            # Confirmation takes one round trip; a slow one only costs the read below.
            waiter.subscribed.wait(max(0.0, min(timeout, _RECHECK)))
            while True:
                value = self.get(key)
                remaining = deadline - time.monotonic()
                if value is not None or remaining <= 0:
                    return value
                if waiter.fired.wait(min(remaining, _RECHECK)):
                    waiter.fired.clear()
                    if waiter.value is not None:
                        return waiter.value
        finally:
            notifier.unwatch(channel, waiter)

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Live value and set keys starting with ``prefix`` (``SCAN``), sorted."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        found: set[str] = set()
        with self._errors(f"list result keys starting with {prefix!r}"):
            for base in (self._values, self._sets):
                for name in self._client.scan_iter(match=base + pattern, count=1000):
                    found.add(name.decode()[len(base) :])
        return sorted(found)[:limit]

    def close(self) -> None:
        """Stop the notification thread and close the connections; idempotent."""
        with self._notifier_lock:
            notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()
        with contextlib.suppress(redis.RedisError):
            self._client.close()
            self._client.connection_pool.disconnect()

    def describe(self) -> str:
        """The URL with credentials redacted, and the namespace."""
        return f"{redact(self.url)} (namespace {self.namespace!r})"
