"""Per-worker rate limits (``"10/s"``, ``"100/m"``, ``"1000/h"``) as token buckets."""

from __future__ import annotations

import threading
import time

__all__ = ["RateLimits", "TokenBucket", "parse_rate"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str | float | int | None) -> float | None:
    """Tasks per second for a Celery rate string; ``None`` or 0 means unlimited."""
    if rate is None or rate == "" or rate == 0:
        return None
    if isinstance(rate, int | float):
        return float(rate)
    number, _, unit = str(rate).partition("/")
    try:
        per_second = float(number) / _UNITS[unit or "s"]
    except (KeyError, ValueError):
        raise ValueError(
            f"bad rate limit {rate!r}: write it as '<number>/s', '<number>/m' or '<number>/h'"
        ) from None
    return per_second or None


class TokenBucket:
    """Allows ``rate`` events per second on average, bursts up to ``capacity``."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self._tokens = self.capacity
        self._at = time.monotonic()

    def take(self) -> float:
        """Take a token; return 0 if one was available, else seconds until one will be
        (nothing is taken then)."""
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def reserve(self) -> float:
        """Take a token if one is there (return 0), else reserve the next one and return
        the seconds until it is due: later calls then queue up behind this one."""
        wait = self.take()
        if wait > 0:
            self._tokens -= 1.0
        return wait


class RateLimits:
    """The worker's token buckets, one per rate-limited task name."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def reserve(self, name: str, rate: str | float | int) -> float:
        """Seconds ``name`` must wait for its turn under ``rate`` (0: run now); the
        turn is taken either way (see :meth:`TokenBucket.reserve`)."""
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = TokenBucket(parse_rate(rate) or 1e9)
            return bucket.reserve()

    def set(self, name: str, per_second: float | None) -> None:
        """Start ``name`` afresh at ``per_second`` (``None``: no bucket until next use)."""
        with self._lock:
            self._buckets.pop(name, None)
            if per_second:
                self._buckets[name] = TokenBucket(per_second)
