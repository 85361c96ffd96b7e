"""What the worker holds between receiving a message and settling it.

- ``held``: every delivery whose lease this worker keeps (the lease keeper extends
  them; the acker settles them), by job key;
- ``pending``: jobs queued for the pool, in order;
- ``delayed``: jobs waiting for their rate limit's token (a heap by start time);
- ``timers``: messages whose ETA the broker could not hold (``max_delay`` 0 or
  tiny), waiting here for it (a heap by ETA, wall clock). They do not count against
  the prefetch window: they are not work that could start.

One condition guards them all; the consumer waits on it for room in the window.
"""

from __future__ import annotations

import collections
import heapq
import threading
from collections.abc import Callable

from polyq.transport import Delivery
from polyq.worker.pools import Job

__all__ = ["Backlog"]


class Backlog:
    """The worker's held messages and queued jobs (see the module docstring).

    The consumer's and dispatcher's hot paths use ``cond``, ``pending``, ``delayed``
    and ``held`` directly (one lock per step, as before the split); everyone else
    goes through the methods."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.held: dict[int, Delivery] = {}
        self.pending: collections.deque[Job] = collections.deque()
        self.delayed: list[tuple[float, int, Job]] = []  # rate-limited, by start time
        self.timers: list[tuple[float, int, Delivery]] = []  # held for their ETA
        #: Held while leases are extended and while held messages are settled or
        #: given back, so an extension from a stale snapshot never re-leases a message
        #: that was just given back (that would hide it for a whole visibility timeout).
        self.lease_lock = threading.Lock()

    # -- held deliveries ---------------------------------------------------------

    def release(self, key: int) -> Delivery | None:
        """Stop holding ``key``'s delivery (to settle or give it back), if held."""
        with self.cond:
            return self.held.pop(key, None)

    def release_many(self, keys: list[int]) -> list[Delivery | None]:
        """:meth:`release` for each key, under one lock."""
        with self.cond:
            return [self.held.pop(key, None) for key in keys]

    def held_deliveries(self) -> list[Delivery]:
        """Every delivery held now (whose lease must be kept)."""
        with self.cond:
            return list(self.held.values())

    def held_keys(self) -> list[int]:
        """The keys of every delivery held now."""
        with self.cond:
            return list(self.held)

    # -- queued jobs -------------------------------------------------------------

    def snapshot(self) -> list[Job]:
        """Jobs received and not started: queued first, then rate-limited by start time."""
        with self.cond:
            return list(self.pending) + [job for _, _, job in sorted(self.delayed)]

    def reserved_count(self) -> int:
        """How many jobs wait for the pool (queued or rate-limited)."""
        with self.cond:
            return len(self.pending) + len(self.delayed)

    def drain(self) -> list[Job]:
        """Remove and return every job not started (shutdown), waking the consumer."""
        with self.cond:
            jobs = list(self.pending) + [job for _, _, job in self.delayed]
            self.pending.clear()
            self.delayed.clear()
            self.cond.notify_all()
        return jobs

    def remove(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Remove and return the queued (not rate-limited) jobs ``predicate`` picks."""
        with self.cond:
            dropped = [job for job in self.pending if predicate(job)]
            for job in dropped:
                self.pending.remove(job)
        return dropped

    def requeue_front(self, jobs: list[Job]) -> None:
        """Put ``jobs`` back at the front of the queue, in order (the pool never
        started them)."""
        with self.cond:
            self.pending.extendleft(reversed(jobs))
            self.cond.notify_all()

    def wake(self) -> None:
        """Wake the consumer (the window changed size)."""
        with self.cond:
            self.cond.notify_all()

    # -- messages held for their ETA --------------------------------------------

    def hold_until(self, eta: float, key: int, delivery: Delivery, limit: int) -> bool:
        """Hold ``delivery`` (its lease kept) until ``eta`` (Unix time); ``False``
        when ``limit`` messages are held so already."""
        with self.cond:
            if len(self.timers) >= limit:
                return False
            self.held[key] = delivery
            heapq.heappush(self.timers, (eta, key, delivery))
            return True

    def due_timers(self, now: float) -> list[Delivery]:
        """Remove and return the held messages whose ETA has come (released: the
        caller accepts them again as new deliveries)."""
        due: list[Delivery] = []
        with self.cond:
            while self.timers and self.timers[0][0] <= now:
                _, key, delivery = heapq.heappop(self.timers)
                if self.held.pop(key, None) is not None:
                    due.append(delivery)
        return due

    def next_timer(self) -> float | None:
        """The earliest ETA held (Unix time), if any. Call with ``cond`` held."""
        return self.timers[0][0] if self.timers else None

    def scheduled_count(self) -> int:
        """How many messages wait here for their ETA."""
        with self.cond:
            return len(self.timers)

    def drain_timers(self) -> list[int]:
        """Forget every ETA timer (shutdown) and return their keys (still held: the
        caller gives them back)."""
        with self.cond:
            keys = [key for _, key, _ in self.timers]
            self.timers.clear()
        return keys
