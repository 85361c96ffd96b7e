"""The SQL transport's tables, indexes and schema version, per dialect.

:class:`Tables` declares them for one table prefix; :class:`Schema` creates them
(race-safe between processes), upgrades an older schema and drops them. The index
design is explained in ``docs/design/sql.md``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from polyq.exceptions import ConfigurationError
from polyq_clients.sql import SQLDatabase

__all__ = [
    "DELAYED",
    "LEASED",
    "MAX_MESSAGE_SIZE",
    "NOT_READY",
    "READY",
    "READY_ROWS",
    "SCHEMA_VERSION",
    "Schema",
    "Tables",
    "forget_version",
    "record_version",
]

#: Version of the tables this package reads and writes (``<prefix>meta``).
SCHEMA_VERSION = 2

#: Largest body + headers accepted. MariaDB's default max_allowed_packet is 16 MiB
#: and a statement carries a batch, so stay well below it; SQLite and PostgreSQL would
#: take more, but one limit for the plugin keeps behaviour the same on every database.
MAX_MESSAGE_SIZE = 8 * 1024 * 1024

#: The ``state`` of a message row.
READY, DELAYED, LEASED = 0, 1, 2

# The predicates of the partial claim and due indexes, repeated literally in the
# queries that should use them (never as bound parameters: a bound parameter cannot
# be matched against an index predicate, and SQLite matches them textually).
READY_ROWS = "state = 0"
NOT_READY = "state <> 0"


class Tables:
    """The transport's tables for one prefix (built per instance: no global metadata)."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        mysql_args: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
        blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
        text = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
        big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
        self.messages = sa.Table(
            f"{prefix}messages",
            self.metadata,
            sa.Column("id", big_id, primary_key=True, autoincrement=True),
            sa.Column("queue", sa.String(255), nullable=False),
            sa.Column("state", sa.SmallInteger, nullable=False),
            sa.Column("priority", sa.SmallInteger, nullable=False),
            sa.Column("visible_at", sa.Double, nullable=False),
            sa.Column("delivery_count", sa.Integer, nullable=False),
            sa.Column("message_id", sa.String(255), nullable=False),
            sa.Column("headers", text, nullable=False),
            sa.Column("body", blob, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sqlite_autoincrement=True,  # ids never reused: a late ack cannot hit a new row
            **mysql_args,
        )
        m = self.messages.c
        self.claim_index = sa.Index(
            f"{prefix}messages_claim",
            m.queue,
            m.state,
            m.priority.desc(),
            m.id,
            postgresql_where=sa.text(READY_ROWS),
            sqlite_where=sa.text(READY_ROWS),
        )
        # Partial (SQLite, PostgreSQL): the rows are all DELAYED or LEASED, so state
        # is left out and "visible_at <= now" bounds one range per queue. With state
        # as the second column, PostgreSQL could (and with statistics of a nearly
        # empty index, did) turn "state IN (1, 2)" into a filter and read every entry
        # of the queue, the dead entries of all messages acked since the last VACUUM
        # included. MySQL/MariaDB: a full index, so state must come first.
        self.due_index = sa.Index(
            f"{prefix}messages_due",
            m.queue,
            m.visible_at,
            postgresql_where=sa.text(NOT_READY),
            sqlite_where=sa.text(NOT_READY),
        ).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]
        # (SQLAlchemy documents a tuple of dialect names; its annotation says one name.)
        sa.Index(f"{prefix}messages_due", m.queue, m.state, m.visible_at).ddl_if(
            dialect=("mysql", "mariadb")  # type: ignore[arg-type]
        )
        self.dead_letters = sa.Table(
            f"{prefix}dead_letters",
            self.metadata,
            sa.Column("id", big_id, primary_key=True, autoincrement=True),
            sa.Column("queue", sa.String(255), nullable=False),
            sa.Column("priority", sa.SmallInteger, nullable=False),
            sa.Column("message_id", sa.String(255), nullable=False),
            sa.Column("headers", text, nullable=False),
            sa.Column("body", blob, nullable=False),
            sa.Column("reason", text, nullable=False),
            sa.Column("failed_at", sa.Double, nullable=False),
            sqlite_autoincrement=True,
            **mysql_args,
        )
        sa.Index(f"{prefix}dead_letters_queue", self.dead_letters.c.queue, self.dead_letters.c.id)
        self.queues = sa.Table(
            f"{prefix}queues",
            self.metadata,
            sa.Column("name", sa.String(255), primary_key=True),
            **mysql_args,
        )
        self.broadcast = sa.Table(
            f"{prefix}broadcast",
            self.metadata,
            sa.Column("id", big_id, primary_key=True, autoincrement=True),
            sa.Column("channel", sa.String(255), nullable=False),
            sa.Column("body", blob, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sqlite_autoincrement=True,
            **mysql_args,
        )
        b = self.broadcast.c
        sa.Index(f"{prefix}broadcast_channel", b.channel, b.id)
        sa.Index(f"{prefix}broadcast_created", b.created_at)
        self.meta = sa.Table(
            f"{prefix}meta",
            self.metadata,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(255), nullable=False),
            **mysql_args,
        )


class Schema:
    """Creates, checks, upgrades and drops the transport's tables on ``db``, and
    opens the transactions of the transport's less frequent operations once the
    tables exist (:meth:`read`, :meth:`write`, :meth:`cursor`)."""

    def __init__(self, db: SQLDatabase, tables: Tables, prefix: str) -> None:
        self.db = db
        self.tables = tables
        self.prefix = prefix
        self._is_pg = db.is_pg
        self._is_sqlite = db.is_sqlite
        self.dialect = db.dialect
        #: Whether the tables are known to exist at this version (checked once).
        self.ready = False

    def write(self, action: str) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on exit."""
        self.ensure()
        return self.db.write(action)

    def read(self, action: str) -> contextlib.AbstractContextManager[Connection]:
        """A read-only transaction (no write lock on SQLite)."""
        self.ensure()
        return self.db.read(action)

    def cursor(self, action: str, write: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A DBAPI cursor in a transaction (see :meth:`SQLDatabase.cursor`)."""
        self.ensure()
        return self.db.cursor(action, write)

    def ensure(self) -> None:
        """Create the tables unless they exist (checked once, by a read that takes no
        write lock: a worker starting while another process holds SQLite's write
        lock does not wait for it)."""
        if self.ready:
            return
        meta = self.tables.meta
        try:
            with self.db.engine.connect() as conn:
                conn.execution_options(polyq_read_only=True)
                with conn.begin():
                    found = conn.execute(
                        sa.select(meta.c.value).where(meta.c.name == "transport_schema_version")
                    ).scalar()
        except sa.exc.DBAPIError:  # no tables yet, or no database: create_schema says
            found = None
        if found is not None and int(found) == SCHEMA_VERSION:
            self.check_server()
            self.ready = True
        else:
            self.create()

    def check_server(self) -> None:
        """Refuse MySQL < 8.0.1 and MariaDB < 10.6, which lack ``SKIP LOCKED``
        (SQLAlchemy renders it for any version; the server would reject every claim)."""
        dialect = self.db.engine.dialect
        version = dialect.server_version_info or ()
        if self.dialect not in ("mysql", "mariadb") or not version:
            return
        mariadb = bool(getattr(dialect, "is_mariadb", False))
        needed = (10, 6) if mariadb else (8, 0, 1)
        if tuple(version[: len(needed)]) < needed:
            name = "MariaDB" if mariadb else "MySQL"
            raise ConfigurationError(
                f"{self.db.describe()} runs {name} {'.'.join(map(str, version))}; polyq needs "
                f"{name} {'.'.join(map(str, needed))} or later (FOR UPDATE SKIP LOCKED)"
            )

    def create(self) -> None:
        """Create the tables, indexes and version row if missing (idempotent, safe
        when several processes do it at once), or upgrade an older schema."""
        with self.db.errors("creating the polyq tables"), self.db.engine.begin() as conn:
            self._lock(conn)
            self.tables.metadata.create_all(conn, checkfirst=True)
            found = record_version(
                conn, self.tables.meta, "transport_schema_version", SCHEMA_VERSION
            )
            if found is not None and found < 2:
                self._upgrade_to_2(conn)
            self._unlock(conn)
        self.check_server()
        self.ready = True

    def _upgrade_to_2(self, conn: Connection) -> None:
        """Schema 1 -> 2: the claim and due indexes become partial and disjoint:
        ``(queue, state, priority DESC, id) WHERE state = 0`` and
        ``(queue, visible_at) WHERE state <> 0``.

        Rebuilt in the upgrade's transaction on SQLite and PostgreSQL, which locks
        the messages table while they are built. MySQL/MariaDB have no partial
        indexes: their indexes are unchanged, only the version moves."""
        if not (self._is_sqlite or self._is_pg):
            return
        for index in (self.tables.claim_index, self.tables.due_index):
            index.drop(conn, checkfirst=True)
            index.create(conn)

    def drop(self) -> None:
        """Drop this prefix's transport tables and everything in them;
        ``<prefix>meta`` goes too once no result tables use it."""
        t = self.tables
        with self.db.errors("dropping the polyq tables"), self.db.engine.begin() as conn:
            for table in (t.messages, t.dead_letters, t.queues, t.broadcast):
                table.drop(conn, checkfirst=True)
            forget_version(conn, t.meta, "transport_schema_version")
        self.ready = False

    def _lock(self, conn: Connection) -> None:
        # SQLite: the BEGIN IMMEDIATE of this transaction already serialises creators.
        name = f"polyq_schema_{self.prefix}"
        if self._is_pg:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
        elif not self._is_sqlite:
            conn.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": name})

    def _unlock(self, conn: Connection) -> None:
        if not self._is_pg and not self._is_sqlite:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": f"polyq_schema_{self.prefix}"})


def forget_version(conn: Connection, meta: sa.Table, name: str) -> None:
    """Remove ``name`` from ``meta``, and ``meta`` itself once it is empty."""
    if not sa.inspect(conn).has_table(meta.name):
        return
    conn.execute(sa.delete(meta).where(meta.c.name == name))
    if conn.execute(sa.select(sa.func.count()).select_from(meta)).scalar_one() == 0:
        meta.drop(conn)


def record_version(conn: Connection, meta: sa.Table, name: str, version: int) -> int | None:
    """Record ``version`` as schema ``name`` in ``meta``; the version found there
    before (``None`` on a fresh database), so that the caller upgrades an older
    schema in the same transaction. A schema newer than this code is refused."""
    found = conn.execute(sa.select(meta.c.value).where(meta.c.name == name)).scalar()
    if found is None:
        conn.execute(sa.insert(meta), {"name": name, "value": str(version)})
        return None
    if int(found) > version:
        raise ConfigurationError(
            f"the database holds polyq schema {name}={found}, newer than this polyq "
            f"understands ({version}); upgrade polyq on this machine"
        )
    if int(found) < version:
        conn.execute(sa.update(meta).where(meta.c.name == name), {"value": str(version)})
    return int(found)
