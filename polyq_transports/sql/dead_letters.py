"""Dead letters of the SQL transport: ``<prefix>dead_letters`` keeps each failed
message with its reason; listing, replaying and purging them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import sqlalchemy as sa

from polyq.transport import DeadLetter, Delivery
from polyq_transports.sql.schema import READY, Schema
from polyq_transports.sql.statements import Statements, fence_params

__all__ = ["DeadLetters"]


class DeadLetters:
    """Moves deliveries to ``<prefix>dead_letters`` and back; ``notify_channel`` is
    the PostgreSQL channel woken when letters are replayed onto a queue."""

    def __init__(self, schema: Schema, statements: Statements, notify_channel: str) -> None:
        self._schema = schema
        self._tables = schema.tables
        self._statements = statements
        self._is_pg = schema.db.is_pg
        self._notify_channel = notify_channel
        self._prefix = schema.prefix
        self._t = schema.tables.messages.name

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<prefix>dead_letters`` with ``reason``."""
        fence = self._statements.sql("fenced", 1)
        move = self._statements.text(
            f"INSERT INTO {self._prefix}dead_letters (queue, priority, message_id, headers, body, "
            f"reason, failed_at) SELECT queue, priority, message_id, headers, body, ?, ? "
            f"FROM {self._t} WHERE {fence}"
        )
        params = fence_params([delivery])
        with self._schema.cursor("dead-lettering") as cursor:
            cursor.execute(move, (str(reason), time.time(), *params))
            cursor.execute(self._statements.sql("ack", 1), params)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""
        table = self._tables.dead_letters
        d = table.c
        stmt = sa.select(table).where(d.queue == queue).order_by(d.id).limit(limit)
        with self._schema.read("listing dead letters") as conn:
            rows = conn.execute(stmt).all()
        return [
            DeadLetter(
                queue=r.queue,
                message_id=r.message_id,
                body=bytes(r.body),
                headers=json.loads(r.headers),
                reason=r.reason,
                failed_at=r.failed_at,
                receipt=r.id,
            )
            for r in rows
        ]

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to ``queue``, ready now, delivery count reset."""
        d = self._tables.dead_letters
        where = [d.c.queue == queue]
        if message_ids is not None:
            if not message_ids:
                return 0
            where.append(d.c.message_id.in_(list(message_ids)))
        now = time.time()
        replayed = (
            sa.select(
                d.c.queue,
                sa.literal(READY, sa.SmallInteger),
                d.c.priority,
                sa.literal(now, sa.Double),
                sa.literal(0, sa.Integer),
                d.c.message_id,
                d.c.headers,
                d.c.body,
                sa.literal(now, sa.Double),
            )
            .where(*where)
            .order_by(d.c.id)
        )
        columns = [
            "queue",
            "state",
            "priority",
            "visible_at",
            "delivery_count",
            "message_id",
            "headers",
            "body",
            "created_at",
        ]
        with self._schema.write("replaying dead letters") as conn:
            conn.execute(sa.insert(self._tables.messages).from_select(columns, replayed))
            count = conn.execute(sa.delete(d).where(*where)).rowcount
            if self._is_pg and count:
                conn.execute(
                    sa.text("SELECT pg_notify(:channel, :queue)"),
                    {"channel": self._notify_channel, "queue": queue},
                )
        return int(count)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue``."""
        d = self._tables.dead_letters
        with self._schema.write("purging dead letters") as conn:
            return int(conn.execute(sa.delete(d).where(d.c.queue == queue)).rowcount)
