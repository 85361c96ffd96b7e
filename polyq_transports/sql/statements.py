"""The hand-written SQL of the SQL transport's hot path (publish, receive, ack,
nack, extend_lease), built per dialect and cached per size.

Through SQLAlchemy Core these statements cost ~10x more per call on SQLite
(statement coercion and cache-key work dominate a 20 us query); see
``docs/design/sql.md``. They are written with ``?`` placeholders and translated to
the driver's ``%s`` where needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from polyq.transport import Delivery
from polyq_transports.sql.schema import DELAYED, LEASED, NOT_READY, READY, READY_ROWS

__all__ = ["Statements", "chunks", "fence_params", "marks"]

# At most this many rows promoted per claim, so that a million messages falling due
# at once make many short transactions rather than one long one.
_PROMOTE_BATCH = 1000


class Statements:
    """The hot-path SQL texts for one messages table on one dialect.

    :meth:`sql` returns the text of statement ``key`` (one of the ``_sql_<key>``
    builders) for lists of the given sizes, cached per instance."""

    def __init__(self, dialect: str, prefix: str, messages: str) -> None:
        self.prefix = prefix
        self._t = messages
        self._is_pg = dialect == "postgresql"
        self._is_sqlite = dialect == "sqlite"
        #: Whether the claim and due indexes are partial (SQLite, PostgreSQL); without
        #: them, due rows are found per state.
        self.partial = self._is_pg or self._is_sqlite
        #: Rows per queue in the ``next_due`` probe.
        self.probes = 2 if self.partial else 3
        self._sql_cache: dict[tuple[Any, ...], str] = {}

    def sql(self, key: str, *sizes: int) -> str:
        """The SQL text ``key`` for lists of ``sizes``, cached per instance."""
        cache_key = (key, *sizes)
        sql = self._sql_cache.get(cache_key)
        if sql is None:
            sql = getattr(self, f"_sql_{key}")(*sizes)
            if not self._is_sqlite:
                sql = sql.replace("?", "%s")
            self._sql_cache[cache_key] = sql
        return sql

    def text(self, sql: str) -> str:
        """``sql`` with the driver's placeholders."""
        return sql if self._is_sqlite else sql.replace("?", "%s")

    def _sql_insert(self) -> str:
        return (
            f"INSERT INTO {self._t} (queue, state, priority, visible_at, delivery_count, "
            "message_id, headers, body, created_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)"
        )

    def _sql_insert_queue(self) -> str:
        q = f"{self.prefix}queues"
        if self._is_sqlite or self._is_pg:
            return f"INSERT INTO {q} (name) VALUES (?) ON CONFLICT DO NOTHING"
        return f"INSERT IGNORE INTO {q} (name) VALUES (?)"

    def _sql_find_queue(self) -> str:
        # Compared by the table's collation: MySQL's PAD SPACE collations (the
        # default utf8mb4_bin too) find "payments" for "payments " (see .queues).
        return f"SELECT name FROM {self.prefix}queues WHERE name = ?"

    def _sql_promote(self, queues: int) -> str:
        # Due DELAYED rows and LEASED rows whose lease ended become READY; the due
        # index reads only the rows that are due (one range per queue).
        # At most _PROMOTE_BATCH per claim, so that a million messages falling due
        # at once make many short transactions rather than one long one.
        state = NOT_READY if self.partial else f"state IN ({DELAYED}, {LEASED})"
        where = f"queue IN ({marks(queues)}) AND {state} AND visible_at <= ?"
        pick = f"SELECT id FROM {self._t} WHERE {where} LIMIT {_PROMOTE_BATCH}"
        if self._is_sqlite:
            return f"UPDATE {self._t} SET state = 0 WHERE id IN ({pick})"
        pick += " FOR UPDATE SKIP LOCKED"
        if self._is_pg:
            return f"UPDATE {self._t} SET state = 0 WHERE id IN ({pick})"
        return pick  # MySQL: the ids, then _sql_promote_ids

    def _sql_promote_ids(self, ids: int) -> str:
        return f"UPDATE {self._t} SET state = 0 WHERE id IN ({marks(ids)})"

    def _sql_claim(self) -> str:
        # The READY slice of one queue, in delivery order, read from the
        # (queue, state, priority DESC, id) index: no sort, no scan of other rows.
        pick = (
            f"SELECT {{cols}} FROM {self._t} WHERE queue = ? AND {READY_ROWS} "
            "ORDER BY priority DESC, id LIMIT ?"
        )
        cols = "id, queue, message_id, body, headers, delivery_count, priority"
        if self._is_sqlite or self._is_pg:
            lock = " FOR UPDATE SKIP LOCKED" if self._is_pg else ""
            return (
                f"UPDATE {self._t} SET state = 2, visible_at = ?, "
                f"delivery_count = delivery_count + 1 WHERE id IN ({pick.format(cols='id')}{lock}) "
                f"RETURNING {cols}"
            )
        return pick.format(cols=cols) + " FOR UPDATE SKIP LOCKED"

    def _sql_lease_ids(self, ids: int) -> str:
        return (
            f"UPDATE {self._t} SET state = 2, visible_at = ?, delivery_count = delivery_count + 1 "
            f"WHERE id IN ({marks(ids)})"
        )

    def _sql_fenced(self, pairs: int) -> str:
        # Rows still held by these deliveries: same id and same delivery count. The
        # plain "id IN" lets every database go through the primary key.
        if self._is_sqlite or self._is_pg:
            rows = "VALUES " + ", ".join(["(?, ?)"] * pairs)
        else:
            rows = ", ".join(["(?, ?)"] * pairs)
        return f"id IN ({marks(pairs)}) AND (id, delivery_count) IN ({rows})"

    def _sql_ack(self, pairs: int) -> str:
        return f"DELETE FROM {self._t} WHERE {self._sql_fenced(pairs)}"

    def _sql_release(self, pairs: int) -> str:
        return f"UPDATE {self._t} SET state = ?, visible_at = ? WHERE {self._sql_fenced(pairs)}"

    def _sql_next_due(self, queues: int) -> str:
        # Per queue, index probes, no row read. READY: is there a head of the claim
        # index? (Its ORDER BY is what keeps PostgreSQL on that index: for a bare
        # EXISTS or LIMIT 1 it estimates that a sequential scan finds a ready row at
        # once, while the front of the heap may be nothing but dead rows.) Then the
        # first visible_at of the due index: one probe where it holds only DELAYED and
        # LEASED rows, one per state where it is a full (queue, state, visible_at).
        ready = (
            f"SELECT {READY}, (SELECT visible_at FROM {self._t} WHERE queue = ? "
            f"AND {READY_ROWS} ORDER BY priority DESC, id LIMIT 1)"
        )
        due = f"SELECT {DELAYED}, min(visible_at) FROM {self._t} WHERE queue = ? AND {{state}}"
        if self.partial:
            probes = [ready, due.format(state=NOT_READY)]
        else:
            probes = [ready, *(due.format(state=f"state = {s}") for s in (DELAYED, LEASED))]
        assert len(probes) == self.probes
        return " UNION ALL ".join(probes * queues)


def chunks(deliveries: Sequence[Delivery], size: int = 500) -> Iterator[Sequence[Delivery]]:
    """Slices of at most ``size``: three parameters each stays far below the
    32766 parameters a SQLite statement takes (and keeps statements small)."""
    for start in range(0, len(deliveries), size):
        yield deliveries[start : start + size]


def marks(count: int) -> str:
    """``count`` comma-separated ``?`` placeholders."""
    return ", ".join(["?"] * count)


def fence_params(deliveries: Sequence[Delivery]) -> list[Any]:
    """Parameters of the ``fenced`` statement: the ids, then (id, count) pairs."""
    pairs = [tuple(d.receipt) for d in deliveries]
    return [p[0] for p in pairs] + [v for p in pairs for v in p]
