"""Queue-wide operations of the SQL transport: the registration of queue names
(refusing a name the database would fold into another), purge, size, the list of
queues and of scheduled (delayed) messages, in SQLAlchemy Core (off the hot path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from polyq.exceptions import InvalidQueueName
from polyq.queues import check_queue_name
from polyq.transport import ScheduledMessage
from polyq_transports.sql.schema import DELAYED, LEASED, NOT_READY, READY_ROWS, Schema

__all__ = ["Queues", "register_queues"]


def register_queues(
    insert: Callable[[list[tuple[str]]], object],
    find: Callable[[str], Sequence[str]],
    names: Sequence[str],
    where: str,
) -> None:
    """Record ``names`` in the queues table and refuse any that the database takes
    for another queue's name.

    MySQL and MariaDB compare ``VARCHAR`` under the column's collation: the default
    ``utf8mb4_bin`` is PAD SPACE (``'payments '`` equals ``'payments'``), and a table
    a DBA moved to a ``_ci`` collation also folds case and accents. Two such names
    would share one queue's rows. The queues table's primary key uses the same
    collation, so after the insert (ignored for an equal name) the lookup returns
    the name first registered: if it is not ``name`` byte for byte, ``name``
    collides with it. ``insert(rows)`` inserts the names (ignoring those present),
    ``find(name)`` returns the registered names equal to ``name``, both in the
    caller's transaction."""
    for name in names:
        check_queue_name(name)
    insert([(name,) for name in names])
    for name in names:
        others = [other for other in find(name) if other != name]
        if others:
            raise InvalidQueueName(
                f"queue name {name!r} collides with the existing queue {others[0]!r} on "
                f"{where}: the table's collation compares them as equal (MySQL/MariaDB "
                "ignore trailing spaces; a case-insensitive collation ignores case), so "
                f"they would share messages. Use {others[0]!r}, or a name that differs "
                "by more than spaces, case or accents; nothing was sent"
            )


class Queues:
    """Reads and clears the queues of one transport's tables."""

    def __init__(self, schema: Schema) -> None:
        self._schema = schema
        self._tables = schema.tables

    def purge(self, queue: str) -> int:
        """Delete the waiting (ready and delayed) messages of ``queue``."""
        t = self._tables.messages
        c = t.c
        now = time.time()
        held = sa.and_(c.state == LEASED, c.visible_at > now)
        # One statement per partial index: "queue = ?" alone matches neither.
        with self._schema.write("purging") as conn:
            ready = conn.execute(sa.delete(t).where(c.queue == queue, sa.text(READY_ROWS)))
            waiting = conn.execute(
                sa.delete(t).where(c.queue == queue, sa.text(NOT_READY), sa.not_(held))
            )
            return int(ready.rowcount) + int(waiting.rowcount)

    def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and leased."""
        t = self._tables.messages
        # Counted in each partial index: "queue = ?" alone matches neither.
        parts = [
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.queue == queue, sa.text(predicate))
            .scalar_subquery()
            for predicate in (READY_ROWS, NOT_READY)
        ]
        with self._schema.read("counting") as conn:
            return int(conn.execute(sa.select(parts[0] + parts[1])).scalar_one())

    def queues(self) -> list[str]:
        """Every queue published to through this database and prefix."""
        q = self._tables.queues
        with self._schema.read("listing queues") as conn:
            return list(conn.execute(sa.select(q.c.name).order_by(q.c.name)).scalars())

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first."""
        c = self._tables.messages.c
        stmt = (
            sa.select(c.queue, c.message_id, c.headers, c.visible_at, c.priority)
            # Literal state and predicate: a bound parameter cannot select the
            # partial due index, which reads the delayed rows in visible_at order.
            .where(c.queue == queue, c.state == sa.literal_column(str(DELAYED)))
            .where(sa.text(NOT_READY))
            .order_by(c.visible_at)
            .limit(limit)
        )
        with self._schema.read("listing scheduled messages") as conn:
            rows = conn.execute(stmt).all()
        return [
            ScheduledMessage(r.queue, r.message_id, json.loads(r.headers), r.visible_at, r.priority)
            for r in rows
        ]
