"""Broadcast on the SQL transport: rows in ``<prefix>broadcast`` that subscribers
poll (woken by NOTIFY on PostgreSQL), pruned after ``broadcast_ttl``; see
``docs/design/sql.md``."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import sqlalchemy as sa

from polyq.exceptions import MessageTooLarge
from polyq.transport import Subscription
from polyq_transports.sql.notify import MIN_POLL
from polyq_transports.sql.schema import MAX_MESSAGE_SIZE, Schema

__all__ = ["Broadcasts", "SQLSubscription"]

# Ids seen this recently are remembered: an earlier id may still be uncommitted.
_BROADCAST_GRACE = 2.0


class Broadcasts:
    """The broadcast rows of one transport: sending, subscribing, pruning.
    ``listen``: subscribers LISTEN on ``channel`` (PostgreSQL with psycopg 3)."""

    def __init__(self, schema: Schema, ttl: float, listen: bool, channel: str) -> None:
        self.schema = schema
        self.db = schema.db
        self.table = schema.tables.broadcast
        self.broadcast_ttl = ttl
        self.listen = listen
        self.channel = channel
        self._is_pg = schema.db.is_pg
        self._last_prune = 0.0

    def broadcast(self, channel: str, body: bytes) -> None:
        """Store ``body`` for the subscribers of ``channel`` (kept ``broadcast_ttl``)."""
        if len(body) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(
                f"broadcast on {channel!r} is {len(body)} bytes, above {MAX_MESSAGE_SIZE}"
            )
        b = self.table
        now = time.time()
        with self.schema.write("broadcasting") as conn:
            conn.execute(sa.insert(b), {"channel": channel, "body": bytes(body), "created_at": now})
            if now - self._last_prune > min(10.0, self.broadcast_ttl):
                self._last_prune = now
                conn.execute(sa.delete(b).where(b.c.created_at < now - self.broadcast_ttl))
            if self._is_pg:  # wakes PostgreSQL subscribers at once (delivered on commit)
                conn.execute(
                    sa.text("SELECT pg_notify(:c, :p)"),
                    {"c": self.channel, "p": channel},
                )

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``: a :class:`SQLSubscription` polling new rows."""
        return SQLSubscription(self, channel)

    def cleanup(self) -> int:
        """Delete broadcast rows older than ``broadcast_ttl`` (``polyq db cleanup``);
        return how many were removed."""
        b = self.table
        with self.schema.write("cleaning up") as conn:
            cutoff = time.time() - self.broadcast_ttl
            return int(conn.execute(sa.delete(b).where(b.c.created_at < cutoff)).rowcount)


class SQLSubscription(Subscription):
    """A broadcast subscription: polls ``<prefix>broadcast`` for rows newer than the
    last one seen, with a pause growing from 1 ms to 100 ms while idle. On
    PostgreSQL it LISTENs on its own connection instead, woken by the NOTIFY each
    ``broadcast`` sends (and still reads every second, in case one was lost).

    Row ids may commit out of order on PostgreSQL and MySQL (two concurrent
    broadcasts), so ids seen in the last few seconds are remembered and the scan
    restarts below them, rather than trusting "the highest id seen".
    """

    def __init__(self, broadcasts: Broadcasts, channel: str) -> None:
        self._broadcasts = broadcasts
        self._channel = channel
        self._buffer: list[bytes] = []
        self._seen: dict[int, float] = {}  # id -> when it was seen
        self._closed = False
        self._listener: Any = None
        if broadcasts.listen:
            # LISTEN before reading the floor: no broadcast slips in between.
            self._listener = broadcasts.db.connect("subscribing")
            self._listener.autocommit = True
            self._listener.execute(f'LISTEN "{broadcasts.channel}"')
        b = broadcasts.table
        with broadcasts.schema.read("subscribing") as conn:
            self._floor = int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(b.c.id), 0))).scalar_one()
            )

    def _fetch(self) -> None:
        b = self._broadcasts.table
        stmt = (
            sa.select(b.c.id, b.c.body)
            .where(b.c.channel == self._channel, b.c.id > self._floor)
            .order_by(b.c.id)
            .limit(500)
        )
        with self._broadcasts.schema.read("reading broadcasts") as conn:
            rows = conn.execute(stmt).all()
        now = time.monotonic()
        for row in rows:
            if row.id not in self._seen:
                self._seen[row.id] = now
                self._buffer.append(bytes(row.body))
        # Ids seen long enough ago that no earlier id can still be uncommitted.
        settled = [i for i, seen_at in self._seen.items() if now - seen_at > _BROADCAST_GRACE]
        if settled:
            self._floor = max(self._floor, max(settled))
            self._seen = {i: s for i, s in self._seen.items() if i > self._floor}

    def get(self, timeout: float) -> bytes | None:
        """The next broadcast body, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pause = MIN_POLL
        while not self._closed:
            if self._buffer:
                return self._buffer.pop(0)
            self._fetch()
            if self._buffer:
                return self._buffer.pop(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._listener is not None:
                self._wait_notify(min(remaining, 1.0))
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.1)
        return None

    def _wait_notify(self, timeout: float) -> None:
        try:
            for notify in self._listener.notifies(timeout=timeout):
                if notify.payload == self._channel:
                    break
        except Exception:  # connection lost: poll from now on
            self._close_listener()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    def close(self) -> None:
        """Stop listening and close the LISTEN connection (idempotent)."""
        self._closed = True
        self._close_listener()
