"""Broadcast over Redis pub/sub: the channel names and :class:`RedisSubscription`,
a listener on its own connection (control commands and events use them).
"""

from __future__ import annotations

import contextlib
import threading
import time

import redis
from redis.client import PubSub

from polyq.exceptions import BrokerError
from polyq.transport import Subscription
from polyq.url import redact
from polyq_clients.redis import translate_errors

__all__ = ["RedisSubscription", "channel_name"]


def channel_name(namespace: str, db: int, channel: str) -> str:
    """The pub/sub channel of ``channel``. Pub/sub ignores the database number, so
    the db and namespace in the name keep two apps on one Redis from hearing each
    other."""
    return f"{namespace}:{db}:broadcast:{channel}"


class RedisSubscription(Subscription):
    """A pub/sub listener on one broadcast channel, on its own connection."""

    def __init__(self, pubsub: PubSub, channel: str, url: str, confirm_timeout: float) -> None:
        self._pubsub = pubsub
        self._channel = channel
        self._url = url
        self._lock = threading.Lock()
        self._closed = False
        with translate_errors(url, f"subscribe to {channel!r}"):
            pubsub.subscribe(channel)
            # Return only once Redis confirmed: from then on nothing broadcast is missed.
            deadline = time.monotonic() + confirm_timeout
            while True:
                reply = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if reply and reply["type"] == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    raise BrokerError(f"Redis at {redact(url)} did not confirm SUBSCRIBE")

    def get(self, timeout: float) -> bytes | None:
        """The next broadcast body, waiting up to ``timeout`` seconds, else ``None``
        (at once when closed, also by another thread while this one waits)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    reply = self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=remaining
                    )
                except Exception as exc:
                    if self.closed:  # closed under us: the read broke, nothing is lost
                        return None
                    if not isinstance(exc, redis.RedisError | OSError):
                        raise
                    with translate_errors(self._url, f"read broadcasts on {self._channel!r}"):
                        raise
                if reply is not None and reply["type"] == "message":
                    data: bytes = reply["data"]
                    return data
                if remaining <= 0:
                    return None
        return None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Unsubscribe and release the connection; idempotent, and safe from any
        thread (a ``get`` waiting in another thread returns ``None``)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(redis.RedisError, OSError):
            self._pubsub.close()
