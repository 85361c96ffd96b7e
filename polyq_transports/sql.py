"""SQL transport: a job table in SQLite, PostgreSQL or MySQL/MariaDB, through SQLAlchemy.

URLs
----
``sqlite:///relative/path.sqlite3``, ``sqlite:////absolute/path.sqlite3``,
``postgresql://user:pass@host/db`` (and ``postgres://``, ``postgresql+psycopg://``; all
psycopg 3), ``mysql://`` / ``mysql+pymysql://`` and ``mariadb://`` / ``mariadb+pymysql://``
(PyMySQL). Celery's ``sqla+`` and ``db+`` prefixes are removed by the registry. Query
parameters that are polyq options (below) are taken out of the URL; any other
parameter is handed to the database driver (``?sslmode=require``, ``?connect_timeout=5``).

Options (``broker_transport_options`` or the query string)
----------------------------------------------------------
``visibility_timeout`` (s, default 1800)
    how long a received message stays leased without ``extend_lease``.
``table_prefix`` (default ``polyq_``)
    prefix of every table name; lets several apps (or test runs) share one database.
``max_poll_interval`` (s, default 0.1)
    longest pause between two checks of an idle ``receive``; the pause starts at
    1 ms and doubles. On PostgreSQL the pause is a wait on LISTEN, woken at once
    by a new message, and this is only the safety net (default 1.0 there).
``busy_timeout`` (s, default 30)
    SQLite: how long a writer waits for the file lock before failing.
``synchronous`` (default ``NORMAL``)
    SQLite: ``NORMAL`` survives a crash of any process (WAL mode); ``FULL`` also a
    power cut, at the cost of an fsync per commit.
``listen`` (default true)
    PostgreSQL: wake idle receivers through LISTEN/NOTIFY. Turn it off behind
    PgBouncer in transaction pooling mode, where LISTEN does not work (the slow
    poll then does all the work; lower ``max_poll_interval``).
``broadcast_ttl`` (s, default 60)
    how long broadcast rows are kept for subscribers that poll.

Tables (``<prefix>`` is ``table_prefix``)
----------------------------------------
``<prefix>messages``: one row per message. ``state`` is READY (0), DELAYED (1) or
LEASED (2); ``visible_at`` is when a DELAYED row becomes due or when a LEASED row's
lease ends. Two composite indexes carry every hot query; on SQLite and PostgreSQL
they are partial and disjoint (MySQL/MariaDB have no partial indexes: there they are
full indexes on the same columns):

* ``(queue, state, priority DESC, id) WHERE state = 0``, the claim index: the claim
  reads the first rows of the READY slice of a queue, already in delivery order
  (higher priority, then oldest), so a receive costs an index descent whatever the
  number of waiting messages;
* ``(queue, visible_at) WHERE state <> 0``, the due index (``(queue, state,
  visible_at)`` on MySQL/MariaDB): "promotion" turns DELAYED rows that are due and
  LEASED rows whose lease ended into READY, reading only the rows that are due (one
  index range per queue), so a million delayed messages do not slow anyone and a
  short delay is never stuck behind a long one.

Disjoint, so that each query has only one index it can use, whatever the planner's
statistics say: with full indexes, once PostgreSQL had analyzed a table of a million
waiting messages it estimated that ``visible_at <= now`` filters nothing and promoted
through the claim index, reading every leased row and, until VACUUM, the dead entry of
every message acked since; on a never-analyzed table it could claim through the due
index and sort the whole READY slice. Queries carry the predicates ``state = 0`` /
``state <> 0`` literally: a bound parameter cannot be matched against an index
predicate, and SQLite matches predicates against the query's terms textually.

A lease is fenced by ``(id, delivery_count)``: every claim raises ``delivery_count``,
so the receipt of a delivery whose lease ended and was claimed again no longer
matches, and its late ``ack``/``nack``/``extend_lease`` does nothing (acking a lost
lease is not an error). Ids never repeat (``AUTOINCREMENT`` on SQLite), so a late
ack can never hit a newer message. ``<prefix>dead_letters`` keeps dead letters with
their reason; ``<prefix>queues`` names every queue published to;
``<prefix>broadcast`` holds broadcast messages (rows with increasing ids that
subscribers poll, pruned after ``broadcast_ttl``); ``<prefix>meta`` records the
schema version.

Claiming
--------
* SQLite (one writer at a time): every write transaction starts with ``BEGIN
  IMMEDIATE``, so two workers never both read and then both update the same rows;
  the claim is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``. The
  file is in WAL mode, so readers are never blocked. Good for one machine: several
  producer and worker processes sharing a file on a local disk (not NFS).
* PostgreSQL: the same statement with ``FOR UPDATE SKIP LOCKED`` in the sub-select,
  so concurrent workers claim disjoint rows without waiting on each other.
* MySQL 8 / MariaDB 10.6+ (no ``UPDATE ... RETURNING``): in one short READ COMMITTED
  transaction, ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE ... WHERE id IN``.

The claim transaction first promotes what became due, then claims, queue by queue,
starting from a different queue on each call so that no queue starves the others.
``publish`` of a batch is one transaction with one ``executemany``; ``ack`` and
``extend_lease`` of a batch are one statement each. On PostgreSQL the transactions
that only move leases (claim, ``nack``, ``extend_lease``) commit with
``synchronous_commit = off``: a server crash can only undo a lease, so the message
is delivered again, never lost; ``publish`` and ``ack`` wait for the flush.

Speed
-----
SQLAlchemy builds the engine, the pool and the schema, and runs the rarely used
operations (dead letters, ``scheduled``, ``purge``...) in Core. The hot path
(``publish``, ``receive``, ``ack``, ``nack``, ``extend_lease``) runs short
hand-written SQL (see ``_sql_*``) on the pooled DBAPI connection: on SQLite a
receive + ack through Core costs about five times more, in statement building and
cache-key work around a 20 us query.

Waking up
---------
An idle ``receive`` asks the indexes when the next message of its queues is due
(per queue: the head of the claim index, and ``min(visible_at)`` of its delayed and
of its leased rows; index probes, no write lock) and sleeps until then or until
the next poll, with a pause growing from 1 ms to ``max_poll_interval``: at most ten
cheap reads per second per idle consumer by default (once idle for 0.1 s). On
PostgreSQL ``publish`` sends ``NOTIFY <prefix>messages, '<queue>'`` (a queue name,
never a body: payloads are limited to 8000 bytes) in its transaction, and idle
receivers wait on LISTEN, so a new message starts within milliseconds.

Transactional enqueue
---------------------
``publish(messages, connection=conn)`` with a SQLAlchemy ``Connection`` or ``Session``
on the same database inserts through the caller's transaction without committing:
the messages exist if and only if the caller commits. (On SQLite the caller's
transaction holds the database's write lock until it ends: keep it short.)

Schema
------
Tables are created on first use (race-safe between processes: ``BEGIN IMMEDIATE`` on
SQLite, an advisory lock on PostgreSQL, ``GET_LOCK`` on MySQL) or explicitly by
:meth:`SQLTransport.create_schema` (``polyq db init``). The version is stored in
``<prefix>meta`` under ``transport_schema_version``; a later polyq that changes the
tables upgrades them in ``create_schema`` from the recorded version, and an older
polyq refuses a newer schema with a clear error instead of misreading it. Schema 2
made the claim and due indexes partial (SQLite, PostgreSQL); a schema 1 database is
upgraded on first use, or by ``polyq db init``: both indexes are rebuilt.

Broadcast
---------
``broadcast`` inserts a row into ``<prefix>broadcast``; a subscription remembers the
highest id at ``subscribe`` time and polls for newer rows of its channel (1 ms to
100 ms pauses). Ids seen in the last two seconds are remembered, because on
PostgreSQL and MySQL two concurrent inserts may commit out of id order. Rows older
than ``broadcast_ttl`` are pruned by ``broadcast`` and by :meth:`SQLTransport.cleanup`.

Times come from the clocks of the machines running polyq (Unix time): keep them in
sync (NTP) when producers and workers run on several hosts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session

from polyq.exceptions import BrokerError, ConfigurationError, MessageTooLarge
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Subscription,
    Transport,
)
from polyq.url import redact

__all__ = [
    "SCHEMA_VERSION",
    "SQLDatabase",
    "SQLSubscription",
    "SQLTransport",
    "build_engine",
    "engine_url",
    "insert_ignore",
    "is_deadlock",
    "table_prefix",
]

#: Version of the tables this module reads and writes (``<prefix>meta``).
SCHEMA_VERSION = 2

READY, DELAYED, LEASED = 0, 1, 2

# Largest body + headers accepted. MariaDB's default max_allowed_packet is 16 MiB and
# a statement carries a batch, so stay well below it; SQLite and PostgreSQL would take
# more, but one limit for the plugin keeps behaviour the same on every database.
MAX_MESSAGE_SIZE = 8 * 1024 * 1024

# Options this plugin understands; they are removed from the URL before the driver
# sees it (drivers reject unknown connection parameters).
_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "table_prefix",
        "max_poll_interval",
        "busy_timeout",
        "synchronous",
        "listen",
        "broadcast_ttl",
    }
)
_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,30}")
# A short first pause: a message or result arriving a few ms after the poll began
# is seen within a ms or two instead of waiting out a 5-10 ms step; the doubling
# reaches the long pauses of an idle poll after a few reads.
_MIN_POLL = 0.001
_PROMOTE_BATCH = 1000
# The predicates of the partial claim and due indexes, repeated literally in the
# queries that should use them (never as bound parameters; see the module docstring).
_READY = "state = 0"
_NOT_READY = "state <> 0"
_BROADCAST_GRACE = 2.0


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL for a polyq SQL URL: explicit drivers (``postgresql://`` →
    ``postgresql+psycopg://``, ``mysql://`` → ``mysql+pymysql://``) and polyq's own
    options removed from the query string."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"not a valid SQL URL: {redact(url)!r} ({exc})") from exc
    driver = _DRIVERS.get(parsed.drivername.lower())
    if driver:
        parsed = parsed.set(drivername=driver)
    parsed = parsed.difference_update_query(_OPTIONS)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigurationError(
            f"{redact(url)!r} is an in-memory SQLite database, which other processes cannot "
            "see; give a file path (sqlite:///polyq.sqlite3) or use memory:// for tests"
        )
    if parsed.get_backend_name() == "sqlite" and not str(parsed.database).startswith("file:"):
        # Resolved now: a process that changes directory later keeps the same file.
        parsed = parsed.set(database=os.path.abspath(str(parsed.database)))
    return parsed


def build_engine(url: str, options: Mapping[str, Any]) -> Engine:
    """Create the engine for ``url``: SQLite in WAL mode with a busy timeout and
    ``BEGIN IMMEDIATE`` for write transactions, MySQL in READ COMMITTED."""
    target = engine_url(url)
    backend = target.get_backend_name()
    kwargs: dict[str, Any] = {"hide_parameters": True}
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False}
        kwargs["poolclass"] = sa.QueuePool
    elif backend in ("mysql", "mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600
    try:
        engine = sa.create_engine(target, **kwargs)
    except Exception as exc:  # a missing driver, a bad option
        raise ConfigurationError(f"cannot use {redact(url)!r}: {exc}") from exc
    if backend == "sqlite":
        busy_ms = int(float(options.get("busy_timeout", 30.0)) * 1000)
        synchronous = str(options.get("synchronous", "NORMAL")).upper()
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigurationError(
                f"synchronous={synchronous!r}: use NORMAL (default) or FULL for {redact(url)}"
            )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            _sqlite_setup(dbapi_conn, busy_ms, synchronous)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front: a transaction that reads then
            # writes cannot deadlock with another one doing the same (SQLITE_BUSY).
            if conn.get_execution_options().get("polyq_read_only"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _sqlite_setup(dbapi_conn: Any, busy_ms: int, synchronous: str) -> None:
    """Settings of every SQLite connection: WAL (readers never wait for the writer),
    the busy timeout, the sync level, and no implicit BEGIN from pysqlite (we issue
    ``BEGIN IMMEDIATE`` ourselves: SQLAlchemy's recipe)."""
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.close()


def table_prefix(options: Mapping[str, Any]) -> str:
    """The ``table_prefix`` option, checked to be usable in table names."""
    prefix = str(options.get("table_prefix", "polyq_"))
    if not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            f"table_prefix={prefix!r}: use letters, digits and underscores (at most 31, "
            "not starting with a digit), e.g. table_prefix=myapp_"
        )
    return prefix


class _Tables:
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
            postgresql_where=sa.text(_READY),
            sqlite_where=sa.text(_READY),
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
            postgresql_where=sa.text(_NOT_READY),
            sqlite_where=sa.text(_NOT_READY),
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


class SQLDatabase:
    """One SQL database as the SQL transport and the SQL result backend use it.

    Each plugin holds one (composition: the plugins share this plumbing, not a base
    class). It owns the engine, rebuilt in a forked child, whose copies of the
    parent's connections are kept but never used or closed; on SQLite, one kept
    connection per thread, because a pool checkout and return cost more than the
    statements of a receive or a get; transactions as SQLAlchemy connections or as
    raw DBAPI cursors; and driver errors turned into :class:`BrokerError` naming the
    database and the fix for the commonest failures. Schema handling stays with the
    plugins.
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any],
        prefix: str,
        on_fork: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._engine = build_engine(url, options)
        self.dialect: str = self._engine.dialect.name  # sqlite, postgresql, mysql, mariadb
        self.is_pg = self.dialect == "postgresql"
        self.is_sqlite = self.dialect == "sqlite"
        #: The driver's base exception class (sqlite3, psycopg or PyMySQL).
        self.dbapi_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error
        self._busy_ms = int(float(options.get("busy_timeout", 30.0)) * 1000)
        self._synchronous = str(options.get("synchronous", "NORMAL")).upper()
        self._on_fork = on_fork
        self._local = threading.local()  # SQLite: this thread's connection
        self._thread_connections: list[Any] = []
        self._inherited: list[Any] = []  # a forked child's copies of the parent's
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, rebuilt in a forked child (connections are never
        shared across ``fork``; see :meth:`check_fork`)."""
        self.check_fork()
        return self._engine

    def check_fork(self) -> None:
        """In a forked child, on first use: drop the parent's pool and thread
        connections, then run ``on_fork`` so the plugin forgets its own (a LISTEN
        connection, waiters of the parent's threads)."""
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    # close=False: the parent's connections are the parent's to close.
                    self._engine.dispose(close=False)
                    # Kept referenced, never used: closing (or collecting) a SQLite
                    # handle in a child can disturb the parent's locks.
                    self._inherited.extend(self._thread_connections)
                    self._thread_connections = []
                    self._local = threading.local()
                    self._pid = os.getpid()
                    if self._on_fork is not None:
                        self._on_fork()

    def describe(self) -> str:
        """The URL with its password hidden (for SQLite, the absolute path of the
        file, so that processes started in different directories can compare),
        and the table prefix."""
        target = self._engine.url
        where = f"sqlite:///{target.database}" if self.is_sqlite else redact(self.url)
        return f"{where} (tables {self.prefix}*)"

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn SQLAlchemy's driver errors inside the block into :class:`BrokerError`."""
        try:
            yield
        except (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError) as exc:
            detail = getattr(exc, "orig", None) or exc
            raise BrokerError(
                redact(
                    f"{action} failed on {self.describe()}: {type(detail).__name__}: "
                    f"{detail}{_hint(detail)}"
                )
            ) from exc

    def _failed(self, action: str, exc: Exception) -> BrokerError:
        return BrokerError(
            redact(f"{action} failed on {self.describe()}: {type(exc).__name__}: {exc}{_hint(exc)}")
        )

    @contextlib.contextmanager
    def write(self, action: str) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on exit."""
        with self.errors(action), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self, action: str) -> Iterator[Connection]:
        """A read-only transaction (no write lock on SQLite)."""
        with self.errors(action), self.engine.connect() as conn:
            conn = conn.execution_options(polyq_read_only=True)
            with conn.begin():
                yield conn

    def cursor(self, action: str, write: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A DBAPI cursor in a transaction (``BEGIN IMMEDIATE`` on SQLite for writes;
        reads there are single statements in autocommit), committed on exit, rolled
        back on error; driver errors become :class:`BrokerError` and a broken
        connection is dropped from the pool."""
        if self.is_sqlite:
            return self._sqlite_cursor(action, write)
        return self._pooled_cursor(action)

    @contextlib.contextmanager
    def _sqlite_cursor(self, action: str, write: bool) -> Iterator[Any]:
        # Opening a file is cheap and never fails for a reason a retry would fix, so
        # there is nothing to invalidate.
        conn = self._thread_connection(action)
        cursor = conn.cursor()
        try:
            if write:
                cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            if write:
                conn.commit()
        except self.dbapi_error as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise self._failed(action, exc) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            cursor.close()

    def _thread_connection(self, action: str) -> Any:
        local = self._local
        if getattr(local, "pid", None) == os.getpid() and local.conn is not None:
            return local.conn
        conn = self.connect(action)  # after a fork, the engine is rebuilt first
        try:
            _sqlite_setup(conn, self._busy_ms, self._synchronous)
        except self.dbapi_error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise self._failed(action, exc) from exc
        local = self._local  # a fresh one if connect() found a fork
        local.conn, local.pid = conn, os.getpid()
        with self._lock:
            self._thread_connections.append(conn)
        return conn

    def connect(self, action: str) -> Any:
        """A new DBAPI connection of the plugin's own, outside the pool (SQLite's
        thread connections, PostgreSQL's LISTEN connections); the caller closes it."""
        engine = self.engine
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        try:
            return engine.dialect.connect(*cargs, **cparams)
        except self.dbapi_error as exc:
            raise self._failed(action, exc) from exc

    @contextlib.contextmanager
    def _pooled_cursor(self, action: str) -> Iterator[Any]:
        with self.errors(action):
            conn = self.engine.raw_connection()
        cursor = None
        try:
            cursor = conn.cursor()
            yield cursor
            conn.commit()
        except self.dbapi_error as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            if self.engine.dialect.is_disconnect(cast(Any, exc), conn.dbapi_connection, cursor):
                conn.invalidate(exc)
            raise self._failed(action, exc) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()
            conn.close()

    def close(self) -> None:
        """Close this process's thread connections and the pool (idempotent)."""
        if os.getpid() == self._pid:
            with self._lock:
                connections, self._thread_connections = self._thread_connections, []
            for conn in connections:
                with contextlib.suppress(Exception):
                    conn.close()
            self._engine.dispose()
        self._local = threading.local()


class SQLTransport(Transport):
    """A transport on a SQL database (SQLite, PostgreSQL, MySQL/MariaDB); see the
    module docstring for the design."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=True,
        max_delay=None,
        max_message_size=MAX_MESSAGE_SIZE,
        broadcast=True,
        lease="timeout",
        extend_lease=True,
        dead_letter=True,
        inspect_scheduled=True,
        may_duplicate=False,
        transactional_enqueue=True,
        durable=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        if self.visibility_timeout <= 0:
            raise ConfigurationError(
                f"visibility_timeout={self.visibility_timeout}: must be > 0 seconds"
            )
        self.prefix = table_prefix(options)
        self.db = SQLDatabase(url, options, self.prefix, on_fork=self._forget_listener)
        self.dialect = self.db.dialect
        self._is_pg = self.db.is_pg
        self._is_sqlite = self.db.is_sqlite
        # Partial indexes (see _Tables); without them, due rows are found per state.
        self._partial = self._is_pg or self._is_sqlite
        self._probes = 2 if self._partial else 3  # per queue in _sql_next_due
        default_poll = 1.0 if self._is_pg else 0.1
        self.max_poll_interval = float(options.get("max_poll_interval", default_poll))
        self.broadcast_ttl = float(options.get("broadcast_ttl", 60.0))
        # LISTEN needs psycopg 3 (postgresql+psycopg2:// URLs simply poll).
        self._listen = (
            self._is_pg
            and self.db.engine.dialect.driver == "psycopg"
            and bool(options.get("listen", True))
        )
        self.tables = _Tables(self.prefix)
        self._notify_channel = f"{self.prefix}messages"
        self._broadcast_channel = f"{self.prefix}broadcast"
        self._lock = threading.Lock()
        self._schema_ready = False
        self._known_queues: set[str] = set()
        self._rotation = itertools.count()
        self._last_prune = 0.0
        self._listener: Any = None  # psycopg connection LISTENing (PostgreSQL)
        self._listener_lock = threading.Lock()
        self._last_drain = 0.0
        self._t = self.tables.messages.name
        self._sql_cache: dict[tuple[Any, ...], str] = {}
        self._dbapi_error = self.db.dbapi_error

    # -- plumbing ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, rebuilt in a forked child (connections are never
        shared across ``fork``)."""
        return self.db.engine

    def _forget_listener(self) -> None:
        # In a forked child: the LISTEN connection is the parent's to close, and a
        # parent thread waiting on it at the fork would leave its lock held for ever.
        self._listener = None
        self._listener_lock = threading.Lock()

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return self.db.errors(action)

    def _write(self, action: str) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on exit."""
        self.ensure_schema()
        return self.db.write(action)

    def _read(self, action: str) -> contextlib.AbstractContextManager[Connection]:
        """A read-only transaction (no write lock on SQLite)."""
        self.ensure_schema()
        return self.db.read(action)

    def describe(self) -> str:
        """The URL with its password hidden (for SQLite, the absolute path of the
        file, so that processes started in different directories can compare),
        and the table prefix."""
        return self.db.describe()

    # -- schema ------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables unless they exist (checked once per instance, by a
        read that takes no write lock: a worker starting while another process
        holds SQLite's write lock does not wait for it)."""
        if self._schema_ready:
            return
        meta = self.tables.meta
        try:
            with self.engine.connect() as conn:
                conn.execution_options(polyq_read_only=True)
                with conn.begin():
                    found = conn.execute(
                        sa.select(meta.c.value).where(meta.c.name == "transport_schema_version")
                    ).scalar()
        except sa.exc.DBAPIError:  # no tables yet, or no database: create_schema says
            found = None
        if found is not None and int(found) == SCHEMA_VERSION:
            self._check_server()
            self._schema_ready = True
        else:
            self.create_schema()

    def _check_server(self) -> None:
        """Refuse MySQL < 8.0.1 and MariaDB < 10.6, which lack ``SKIP LOCKED``
        (SQLAlchemy renders it for any version; the server would reject every claim)."""
        dialect = self.engine.dialect
        version = dialect.server_version_info or ()
        if self.dialect not in ("mysql", "mariadb") or not version:
            return
        mariadb = bool(getattr(dialect, "is_mariadb", False))
        needed = (10, 6) if mariadb else (8, 0, 1)
        if tuple(version[: len(needed)]) < needed:
            name = "MariaDB" if mariadb else "MySQL"
            raise ConfigurationError(
                f"{self.describe()} runs {name} {'.'.join(map(str, version))}; polyq needs "
                f"{name} {'.'.join(map(str, needed))} or later (FOR UPDATE SKIP LOCKED)"
            )

    def create_schema(self) -> None:
        """Create the tables, indexes and version row if missing (idempotent, safe
        when several processes do it at once), or upgrade an older schema;
        ``polyq db init`` calls this."""
        with self._errors("creating the polyq tables"), self.engine.begin() as conn:
            self._schema_lock(conn)
            self.tables.metadata.create_all(conn, checkfirst=True)
            found = _record_version(
                conn, self.tables.meta, "transport_schema_version", SCHEMA_VERSION
            )
            if found is not None and found < 2:
                self._upgrade_to_2(conn)
            self._schema_unlock(conn)
        self._check_server()
        self._schema_ready = True

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

    def drop_schema(self) -> None:
        """Drop this prefix's transport tables and everything in them (tests,
        uninstall); ``<prefix>meta`` goes too once no result tables use it."""
        t = self.tables
        with self._errors("dropping the polyq tables"), self.engine.begin() as conn:
            for table in (t.messages, t.dead_letters, t.queues, t.broadcast):
                table.drop(conn, checkfirst=True)
            _forget_version(conn, t.meta, "transport_schema_version")
        self._schema_ready = False

    def _schema_lock(self, conn: Connection) -> None:
        # SQLite: the BEGIN IMMEDIATE of this transaction already serialises creators.
        name = f"polyq_schema_{self.prefix}"
        if self._is_pg:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
        elif not self._is_sqlite:
            conn.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": name})

    def _schema_unlock(self, conn: Connection) -> None:
        if not self._is_pg and not self._is_sqlite:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": f"polyq_schema_{self.prefix}"})

    # -- hot-path SQL ----------------------------------------------------------------
    #
    # publish, receive, ack, nack and extend_lease run hand-written SQL on the pooled
    # DBAPI connection: through SQLAlchemy Core they cost ~10x more per call on SQLite
    # (statement coercion and cache-key work dominate a 20 us query). The SQL is
    # written with "?" placeholders and translated to the driver's "%s" where needed.

    def _sql(self, key: str, *sizes: int) -> str:
        """The SQL text ``key`` for lists of ``sizes``, cached per instance."""
        cache_key = (key, *sizes)
        sql = self._sql_cache.get(cache_key)
        if sql is None:
            sql = getattr(self, f"_sql_{key}")(*sizes)
            if not self._is_sqlite:
                sql = sql.replace("?", "%s")
            self._sql_cache[cache_key] = sql
        return sql

    def _sql_text(self, sql: str) -> str:
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

    def _sql_promote(self, queues: int) -> str:
        # Due DELAYED rows and LEASED rows whose lease ended become READY; the due
        # index reads only the rows that are due (one range per queue).
        # At most _PROMOTE_BATCH per claim, so that a million messages falling due
        # at once make many short transactions rather than one long one.
        state = _NOT_READY if self._partial else f"state IN ({DELAYED}, {LEASED})"
        where = f"queue IN ({_marks(queues)}) AND {state} AND visible_at <= ?"
        pick = f"SELECT id FROM {self._t} WHERE {where} LIMIT {_PROMOTE_BATCH}"
        if self._is_sqlite:
            return f"UPDATE {self._t} SET state = 0 WHERE id IN ({pick})"
        pick += " FOR UPDATE SKIP LOCKED"
        if self._is_pg:
            return f"UPDATE {self._t} SET state = 0 WHERE id IN ({pick})"
        return pick  # MySQL: the ids, then _sql_promote_ids

    def _sql_promote_ids(self, ids: int) -> str:
        return f"UPDATE {self._t} SET state = 0 WHERE id IN ({_marks(ids)})"

    def _sql_claim(self) -> str:
        # The READY slice of one queue, in delivery order, read from the
        # (queue, state, priority DESC, id) index: no sort, no scan of other rows.
        pick = (
            f"SELECT {{cols}} FROM {self._t} WHERE queue = ? AND {_READY} "
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
            f"WHERE id IN ({_marks(ids)})"
        )

    def _sql_fenced(self, pairs: int) -> str:
        # Rows still held by these deliveries: same id and same delivery count. The
        # plain "id IN" lets every database go through the primary key.
        if self._is_sqlite or self._is_pg:
            rows = "VALUES " + ", ".join(["(?, ?)"] * pairs)
        else:
            rows = ", ".join(["(?, ?)"] * pairs)
        return f"id IN ({_marks(pairs)}) AND (id, delivery_count) IN ({rows})"

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
            f"AND {_READY} ORDER BY priority DESC, id LIMIT 1)"
        )
        due = f"SELECT {DELAYED}, min(visible_at) FROM {self._t} WHERE queue = ? AND {{state}}"
        if self._partial:
            probes = [ready, due.format(state=_NOT_READY)]
        else:
            probes = [ready, *(due.format(state=f"state = {s}") for s in (DELAYED, LEASED))]
        assert len(probes) == self._probes
        return " UNION ALL ".join(probes * queues)

    def _raw(self, action: str, write: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A DBAPI cursor in a transaction (see :meth:`SQLDatabase.cursor`)."""
        self.ensure_schema()
        return self.db.cursor(action, write)

    # -- producing -----------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Insert ``messages`` in one transaction (one ``executemany``); with
        ``connection=`` (a SQLAlchemy ``Connection`` or ``Session``), insert through
        the caller's transaction and leave the commit to the caller."""
        if not messages:
            return
        now = time.time()
        rows = []
        for message in messages:
            headers = json.dumps(dict(message.headers), separators=(",", ":"))
            size = len(message.body) + len(headers)
            if size > MAX_MESSAGE_SIZE:
                raise MessageTooLarge(
                    f"message {message.message_id} for queue {message.queue!r} is {size} bytes "
                    f"(body + headers), above the {MAX_MESSAGE_SIZE} bytes {self.describe()} "
                    "accepts; nothing was published. Store large payloads elsewhere and send "
                    "a reference."
                )
            delay = max(float(message.delay), 0.0)
            rows.append(
                (
                    message.queue,
                    DELAYED if delay > 0 else READY,
                    # Out-of-range priorities are clamped, as Celery does, not refused.
                    min(max(int(message.priority), 0), 9),
                    now + delay,
                    message.message_id,
                    headers,
                    bytes(message.body),
                    now,
                )
            )
        queues = sorted({row[0] for row in rows})
        new_queues = [(q,) for q in queues if q not in self._known_queues]
        connection = kwargs.get("connection")
        if connection is not None:
            self._publish_in(connection, rows, queues, new_queues)
            return
        with self._raw("publishing") as cursor:
            if new_queues:
                cursor.executemany(self._sql("insert_queue"), new_queues)
            if len(rows) == 1:
                cursor.execute(self._sql("insert"), rows[0])
            else:
                cursor.executemany(self._sql("insert"), rows)
            if self._is_pg:
                for queue in queues:
                    cursor.execute("SELECT pg_notify(%s, %s)", (self._notify_channel, queue))
        self._known_queues.update(queues)

    def _publish_in(
        self,
        connection: Any,
        rows: list[tuple[Any, ...]],
        queues: list[str],
        new_queues: list[tuple[str]],
    ) -> None:
        if isinstance(connection, Session):
            connection = connection.connection()
        if not isinstance(connection, Connection):
            raise ConfigurationError(
                f"publish(connection=...) takes a SQLAlchemy Connection or Session, "
                f"not {type(connection).__name__}"
            )
        if connection.dialect.name != self.dialect:
            raise ConfigurationError(
                f"publish(connection=...) got a {connection.dialect.name} connection but the "
                f"broker is {self.describe()}; use a connection to the broker's database"
            )
        self.ensure_schema()
        with self._errors("publishing in the caller's transaction"):
            # The caller's transaction commits or rolls back the rows (and, on
            # PostgreSQL, the NOTIFY, which is only delivered on commit).
            if new_queues:
                connection.exec_driver_sql(self._sql("insert_queue"), new_queues)
            connection.exec_driver_sql(self._sql("insert"), rows)
            if self._is_pg:
                for queue in queues:
                    connection.exec_driver_sql(
                        "SELECT pg_notify(%s, %s)", (self._notify_channel, queue)
                    )

    # -- consuming -----------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages`` messages; see :meth:`Transport.receive`."""
        if not queues or max_messages <= 0:
            return []
        queues = list(dict.fromkeys(queues))
        deadline = time.monotonic() + max(wait, 0.0)
        pause = _MIN_POLL
        if self._listener is not None:
            self._drain_notifies()
        while True:
            deliveries = self._claim(queues, max_messages)
            if deliveries:
                return deliveries
            # Idle: look (read-only) when the next message is due, sleep until then
            # or the next poll, and only claim again when something is there.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                due_in = self._next_due(queues)
                if due_in is not None and due_in <= 0:
                    break
                nap = min(pause, remaining)
                if due_in is not None:
                    nap = min(nap, due_in)
                pause = min(pause * 2, self.max_poll_interval)
                if self._listen:
                    if self._wait_notify(queues, nap):
                        break
                else:
                    time.sleep(nap)

    def _claim(self, queues: list[str], max_messages: int) -> list[Delivery]:
        now = time.time()
        lease_end = now + self.visibility_timeout
        # Rotate the first queue between calls so that no queue starves the others.
        start = next(self._rotation) % len(queues)
        order = queues[start:] + queues[:start]
        for attempt in range(3):
            rows: list[tuple[Any, ...]] = []
            try:
                with self._raw("receiving") as cursor:
                    self._lease_only(cursor)
                    self._promote(cursor, queues, now)
                    for queue in order:
                        want = max_messages - len(rows)
                        if want <= 0:
                            break
                        rows.extend(self._claim_queue(cursor, queue, want, lease_end))
                break
            except BrokerError as exc:
                # SKIP LOCKED keeps claimers apart, but InnoDB may still pick a
                # deadlock victim (1213) between a promotion and a claim: try again.
                if attempt == 2 or not is_deadlock(exc.__cause__):
                    raise
        # Decoded after the commit: the write lock (SQLite) is held no longer than needed.
        return [self._delivery(row) for row in rows]

    def _claim_queue(
        self, cursor: Any, queue: str, limit: int, lease_end: float
    ) -> list[tuple[Any, ...]]:
        """Lease up to ``limit`` rows of ``queue``; the rows with their new delivery
        count, in delivery order."""
        if self._is_sqlite or self._is_pg:
            cursor.execute(self._sql("claim"), (lease_end, queue, limit))
            # RETURNING gives no order: restore priority, then age.
            return sorted(cursor.fetchall(), key=lambda r: (-r[6], r[0]))
        # MySQL/MariaDB have no UPDATE ... RETURNING: lock the rows, then lease them.
        cursor.execute(self._sql("claim"), (queue, limit))
        rows = cursor.fetchall()
        if not rows:
            return []
        cursor.execute(self._sql("lease_ids", len(rows)), (lease_end, *(r[0] for r in rows)))
        return [(*r[:5], r[5] + 1, r[6]) for r in rows]

    @staticmethod
    def _delivery(row: Sequence[Any]) -> Delivery:
        row_id, queue, message_id, body, headers, count, priority = row
        return Delivery(
            queue=queue,
            message_id=message_id,
            body=bytes(body),
            headers=json.loads(headers),
            delivery_count=count,
            receipt=(row_id, count),
            priority=priority,
        )

    def _lease_only(self, cursor: Any) -> None:
        """PostgreSQL: commit this transaction without waiting for its WAL flush.

        It only changes leases (claim, nack, extend). If the server crashes before
        the flush, the change is lost and the message is simply leased again from
        its previous state: delivered again, never lost. ``publish`` and ``ack``
        keep the durable commit. Saves one fsync (ms) per receive."""
        if self._is_pg:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")

    def _promote(self, cursor: Any, queues: list[str], now: float) -> None:
        """Make due DELAYED rows, and LEASED rows whose lease ended, READY."""
        cursor.execute(self._sql("promote", len(queues)), (*queues, now))
        if not (self._is_sqlite or self._is_pg):
            ids = [r[0] for r in cursor.fetchall()]
            if ids:
                cursor.execute(self._sql("promote_ids", len(ids)), ids)

    def _next_due(self, queues: list[str]) -> float | None:
        """Seconds until the next message of ``queues`` can be claimed (<= 0: now),
        ``None`` when the queues are empty. A few index probes, no write lock."""
        params = [queue for queue in queues for _ in range(self._probes)]
        with self._raw("polling", write=False) as cursor:
            cursor.execute(self._sql("next_due", len(queues)), params)
            rows = cursor.fetchall()
        now = time.time()
        dues = [-1.0 if state == READY else due - now for state, due in rows if due is not None]
        return min(dues) if dues else None

    def _wait_notify(self, queues: list[str], timeout: float) -> bool:
        """PostgreSQL: wait up to ``timeout`` for a NOTIFY naming one of ``queues``."""
        if not self._listener_lock.acquire(blocking=False):
            time.sleep(timeout)  # another thread of this process is listening
            return False
        try:
            listener = self._listening()
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for notify in listener.notifies(timeout=remaining, stop_after=1):
                    if notify.payload in queues:
                        return True
        except Exception as exc:  # the listening connection broke: fall back to polling
            self._drop_listener()
            if isinstance(exc, sa.exc.SQLAlchemyError | OSError) or type(exc).__module__.startswith(
                "psycopg"
            ):
                time.sleep(min(timeout, 0.1))
                return False
            raise
        finally:
            self._listener_lock.release()

    def _drain_notifies(self) -> None:
        """Read the notifications a busy consumer left unread (about once a second):
        PostgreSQL keeps them in one queue shared by the whole server, which a
        listener that never reads would let grow."""
        now = time.monotonic()
        if now - self._last_drain < 1.0 or not self._listener_lock.acquire(blocking=False):
            return
        try:
            self._last_drain = now
            if self._listener is not None:
                for _ in self._listener.notifies(timeout=0):
                    pass
        except Exception:
            self._drop_listener()
        finally:
            self._listener_lock.release()

    def _listening(self) -> Any:
        if self._listener is None:
            engine = self.engine
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            conn = engine.dialect.connect(*cargs, **cparams)
            conn.autocommit = True
            conn.execute(f'LISTEN "{self._notify_channel}"')
            self._listener = conn
        return self._listener

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages (one statement per 500); lost leases are ignored."""
        if not deliveries:
            return
        with self._raw("acking") as cursor:
            for chunk in _chunks(deliveries):
                cursor.execute(self._sql("ack", len(chunk)), _fence_params(chunk))

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Release the lease: ready now, or after ``delay`` seconds."""
        delay = max(float(delay), 0.0)
        state = DELAYED if delay > 0 else READY
        with self._raw("nacking") as cursor:
            self._lease_only(cursor)
            cursor.execute(
                self._sql("release", 1), (state, time.time() + delay, *_fence_params([delivery]))
            )

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Restart the leases at ``visibility_timeout`` from now (one statement per
        500). A
        lease that ended but was not claimed by anyone else is taken back."""
        if not deliveries:
            return
        lease_end = time.time() + self.visibility_timeout
        with self._raw("extending leases") as cursor:
            self._lease_only(cursor)
            for chunk in _chunks(deliveries):
                cursor.execute(
                    self._sql("release", len(chunk)), (LEASED, lease_end, *_fence_params(chunk))
                )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<prefix>dead_letters`` with ``reason``."""
        fence = self._sql("fenced", 1)
        move = self._sql_text(
            f"INSERT INTO {self.prefix}dead_letters (queue, priority, message_id, headers, body, "
            f"reason, failed_at) SELECT queue, priority, message_id, headers, body, ?, ? "
            f"FROM {self._t} WHERE {fence}"
        )
        params = _fence_params([delivery])
        with self._raw("dead-lettering") as cursor:
            cursor.execute(move, (str(reason), time.time(), *params))
            cursor.execute(self._sql("ack", 1), params)

    # -- queues --------------------------------------------------------------------

    def purge(self, queue: str) -> int:
        """Delete the waiting (ready and delayed) messages of ``queue``."""
        t = self.tables.messages
        c = t.c
        now = time.time()
        held = sa.and_(c.state == LEASED, c.visible_at > now)
        # One statement per partial index: "queue = ?" alone matches neither.
        with self._write("purging") as conn:
            ready = conn.execute(sa.delete(t).where(c.queue == queue, sa.text(_READY)))
            waiting = conn.execute(
                sa.delete(t).where(c.queue == queue, sa.text(_NOT_READY), sa.not_(held))
            )
            return int(ready.rowcount) + int(waiting.rowcount)

    def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and leased."""
        t = self.tables.messages
        # Counted in each partial index: "queue = ?" alone matches neither.
        parts = [
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.queue == queue, sa.text(predicate))
            .scalar_subquery()
            for predicate in (_READY, _NOT_READY)
        ]
        with self._read("counting") as conn:
            return int(conn.execute(sa.select(parts[0] + parts[1])).scalar_one())

    def queues(self) -> list[str]:
        """Every queue published to through this database and prefix."""
        q = self.tables.queues
        with self._read("listing queues") as conn:
            return list(conn.execute(sa.select(q.c.name).order_by(q.c.name)).scalars())

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first."""
        c = self.tables.messages.c
        stmt = (
            sa.select(c.queue, c.message_id, c.headers, c.visible_at, c.priority)
            # Literal state and predicate: a bound parameter cannot select the
            # partial due index, which reads the delayed rows in visible_at order.
            .where(c.queue == queue, c.state == sa.literal_column(str(DELAYED)))
            .where(sa.text(_NOT_READY))
            .order_by(c.visible_at)
            .limit(limit)
        )
        with self._read("listing scheduled messages") as conn:
            rows = conn.execute(stmt).all()
        return [
            ScheduledMessage(r.queue, r.message_id, json.loads(r.headers), r.visible_at, r.priority)
            for r in rows
        ]

    # -- dead letters --------------------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""
        table = self.tables.dead_letters
        d = table.c
        stmt = sa.select(table).where(d.queue == queue).order_by(d.id).limit(limit)
        with self._read("listing dead letters") as conn:
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
        d = self.tables.dead_letters
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
        with self._write("replaying dead letters") as conn:
            conn.execute(sa.insert(self.tables.messages).from_select(columns, replayed))
            count = conn.execute(sa.delete(d).where(*where)).rowcount
            if self._is_pg and count:
                conn.execute(
                    sa.text("SELECT pg_notify(:channel, :queue)"),
                    {"channel": self._notify_channel, "queue": queue},
                )
        return int(count)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue``."""
        d = self.tables.dead_letters
        with self._write("purging dead letters") as conn:
            return int(conn.execute(sa.delete(d).where(d.c.queue == queue)).rowcount)

    # -- broadcast -----------------------------------------------------------------

    def broadcast(self, channel: str, body: bytes) -> None:
        """Store ``body`` for the subscribers of ``channel`` (kept ``broadcast_ttl``)."""
        if len(body) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(
                f"broadcast on {channel!r} is {len(body)} bytes, above {MAX_MESSAGE_SIZE}"
            )
        b = self.tables.broadcast
        now = time.time()
        with self._write("broadcasting") as conn:
            conn.execute(sa.insert(b), {"channel": channel, "body": bytes(body), "created_at": now})
            if now - self._last_prune > min(10.0, self.broadcast_ttl):
                self._last_prune = now
                conn.execute(sa.delete(b).where(b.c.created_at < now - self.broadcast_ttl))
            if self._is_pg:  # wakes PostgreSQL subscribers at once (delivered on commit)
                conn.execute(
                    sa.text("SELECT pg_notify(:c, :p)"),
                    {"c": self._broadcast_channel, "p": channel},
                )

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``: a :class:`SQLSubscription` polling new rows."""
        return SQLSubscription(self, channel)

    def cleanup(self) -> int:
        """Delete broadcast rows older than ``broadcast_ttl`` (``polyq db cleanup``);
        return how many were removed."""
        b = self.tables.broadcast
        with self._write("cleaning up") as conn:
            cutoff = time.time() - self.broadcast_ttl
            return int(conn.execute(sa.delete(b).where(b.c.created_at < cutoff)).rowcount)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections (idempotent)."""
        self._drop_listener()
        self.db.close()


class SQLSubscription(Subscription):
    """A broadcast subscription: polls ``<prefix>broadcast`` for rows newer than the
    last one seen, with a pause growing from 1 ms to 100 ms while idle. On
    PostgreSQL it LISTENs on its own connection instead, woken by the NOTIFY each
    ``broadcast`` sends (and still reads every second, in case one was lost).

    Row ids may commit out of order on PostgreSQL and MySQL (two concurrent
    broadcasts), so ids seen in the last few seconds are remembered and the scan
    restarts below them, rather than trusting "the highest id seen".
    """

    def __init__(self, transport: SQLTransport, channel: str) -> None:
        self._transport = transport
        self._channel = channel
        self._buffer: list[bytes] = []
        self._seen: dict[int, float] = {}  # id -> when it was seen
        self._closed = False
        self._listener: Any = None
        if transport._listen:
            # LISTEN before reading the floor: no broadcast slips in between.
            self._listener = transport.db.connect("subscribing")
            self._listener.autocommit = True
            self._listener.execute(f'LISTEN "{transport._broadcast_channel}"')
        b = transport.tables.broadcast
        with transport._read("subscribing") as conn:
            self._floor = int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(b.c.id), 0))).scalar_one()
            )

    def _fetch(self) -> None:
        b = self._transport.tables.broadcast
        stmt = (
            sa.select(b.c.id, b.c.body)
            .where(b.c.channel == self._channel, b.c.id > self._floor)
            .order_by(b.c.id)
            .limit(500)
        )
        with self._transport._read("reading broadcasts") as conn:
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
        pause = _MIN_POLL
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


def _hint(exc: object) -> str:
    """How to fix the commonest failures, appended to the error message."""
    text = str(exc).lower()
    if "database is locked" in text:
        return (
            " (another process held the SQLite write lock longer than busy_timeout; raise"
            " the busy_timeout option, keep transactions short, or use PostgreSQL)"
        )
    if "unable to open database file" in text:
        return " (check that the directory exists and is writable by this user)"
    if ("connection refused" in text or "can't connect" in text) and "server running" not in text:
        return " (is the database server running and listening at that address?)"
    if ("does not exist" in text and "database" in text) or "unknown database" in text:
        return " (create the database first; polyq creates only its tables)"
    if "password authentication failed" in text or "access denied" in text:
        return " (check the user name and password in the URL)"
    return ""


def is_deadlock(exc: BaseException | None) -> bool:
    """Whether a driver error is a deadlock the database resolved by aborting us
    (PostgreSQL 40P01, MySQL/MariaDB 1213): the transaction can simply run again."""
    code = getattr(exc, "sqlstate", None) or (getattr(exc, "args", None) or [None])[0]
    return code in ("40P01", 1213)


def _chunks(deliveries: Sequence[Delivery], size: int = 500) -> Iterator[Sequence[Delivery]]:
    """Slices of at most ``size``: three parameters each stays far below the
    32766 parameters a SQLite statement takes (and keeps statements small)."""
    for start in range(0, len(deliveries), size):
        yield deliveries[start : start + size]


def _marks(count: int) -> str:
    return ", ".join(["?"] * count)


def _fence_params(deliveries: Sequence[Delivery]) -> list[Any]:
    """Parameters of :meth:`SQLTransport._sql_fenced`: the ids, then (id, count) pairs."""
    pairs = [tuple(d.receipt) for d in deliveries]
    return [p[0] for p in pairs] + [v for p in pairs for v in p]


def insert_ignore(dialect: str, table: sa.Table) -> Any:
    """``INSERT`` that silently skips rows whose primary key exists."""
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return pg.insert(table).on_conflict_do_nothing()
    return sa.insert(table).prefix_with("IGNORE")


def _forget_version(conn: Connection, meta: sa.Table, name: str) -> None:
    """Remove ``name`` from ``meta``, and ``meta`` itself once it is empty."""
    if not sa.inspect(conn).has_table(meta.name):
        return
    conn.execute(sa.delete(meta).where(meta.c.name == name))
    if conn.execute(sa.select(sa.func.count()).select_from(meta)).scalar_one() == 0:
        meta.drop(conn)


def _record_version(conn: Connection, meta: sa.Table, name: str, version: int) -> int | None:
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
