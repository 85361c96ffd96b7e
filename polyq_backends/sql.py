"""SQL result backend: results, sets and locks in SQLite, PostgreSQL or MySQL/MariaDB.

URLs and engine set-up are those of the SQL transport (``sqlite:///path``,
``postgresql://`` = ``postgresql+psycopg://``, ``mysql://`` = ``mysql+pymysql://``,
``mariadb://`` = ``mariadb+pymysql://``): SQLite runs in WAL mode with a busy timeout and
takes its write lock up front (``BEGIN IMMEDIATE``); MySQL runs in READ COMMITTED.
The broker and the result store can share one database file: their tables differ.

Options (``result_backend_transport_options`` or the query string)
------------------------------------------------------------------
``table_prefix`` (default ``polyq_``)
    prefix of every table name.
``max_poll_interval`` (s, default 0.1; 1.0 on PostgreSQL)
    longest pause of a polling ``wait``. On PostgreSQL ``wait`` is woken by
    LISTEN/NOTIFY and the poll is only a safety net.
``busy_timeout`` (s, default 30), ``synchronous`` (default ``NORMAL``)
    SQLite, as for the transport.
``listen`` (default true)
    PostgreSQL: wake ``wait`` through LISTEN/NOTIFY; turn it off behind PgBouncer in
    transaction pooling mode, where LISTEN does not work.

Tables
------
``<prefix>results (key PRIMARY KEY, value, expires_at)``: the key-value store.
``expires_at`` is a Unix time or NULL (no expiry); every read filters on it, so an
expired value is never returned however late :meth:`SQLResultBackend.cleanup`
(``polyq db cleanup``) deletes it. An index on ``expires_at`` keeps the cleanup cheap.

``<prefix>sets (key PRIMARY KEY, size, expires_at)`` and
``<prefix>set_members (key, member, PRIMARY KEY (key, member))``: ``add_to_set`` locks
the set's row (``SELECT ... FOR UPDATE``; SQLite's write lock), inserts the member
unless present (the primary key makes a second insert of a member a no-op) and raises
``size`` only when the member was new. Concurrent adders of one set are therefore
serialised and each sees the size right after its own addition: a chord's header
members are counted once each, and exactly one adder sees the final count.

``set_if_absent`` reads the key under a row lock: absent → ``INSERT`` that ignores a
duplicate key (a concurrent winner makes it a no-op, detected by the row count);
expired → overwritten; live → refused. Exactly one of many concurrent callers wins.

On PostgreSQL ``set`` sends ``NOTIFY <prefix>results, '<key>'`` in its transaction and
``wait`` listens on one connection per backend instance (shared by its threads), so a
result is seen within milliseconds of its commit. The schema version is recorded in
``<prefix>meta`` under ``backend_schema_version``; see the transport for the upgrade
policy.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import URL, Connection, Engine, make_url

from polyq.backend import BackendCapabilities, ResultBackend
from polyq.exceptions import BrokerError, ConfigurationError
from polyq.url import redact

__all__ = ["SCHEMA_VERSION", "SQLResultBackend"]

#: Version of the tables this module reads and writes (``<prefix>meta``).
SCHEMA_VERSION = 1

_OPTIONS = frozenset(
    {
        "table_prefix",
        "max_poll_interval",
        "busy_timeout",
        "synchronous",
        "listen",
        "visibility_timeout",
    }
)
_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,30}")
_KEY_LENGTH = 255
_SAFETY_POLL = 1.0


def _engine_url(url: str) -> URL:
    # Same rules as the transport's (plugins do not import each other).
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
    return parsed


def _build_engine(url: str, options: Mapping[str, Any]) -> Engine:
    target = _engine_url(url)
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
    except Exception as exc:
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
            # pysqlite would emit its own deferred BEGIN; take over (SQLAlchemy's recipe).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # The write lock up front: read-then-write transactions cannot deadlock.
            if conn.get_execution_options().get("polyq_read_only"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _Tables:
    """The backend's tables for one prefix (per instance: no global metadata)."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        mysql_args = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
        blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
        self.results = sa.Table(
            f"{prefix}results",
            self.metadata,
            sa.Column("key", sa.String(_KEY_LENGTH), primary_key=True),
            sa.Column("value", blob, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=True, index=True),
            **mysql_args,
        )
        self.sets = sa.Table(
            f"{prefix}sets",
            self.metadata,
            sa.Column("key", sa.String(_KEY_LENGTH), primary_key=True),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=True, index=True),
            **mysql_args,
        )
        self.members = sa.Table(
            f"{prefix}set_members",
            self.metadata,
            sa.Column("key", sa.String(_KEY_LENGTH), primary_key=True),
            sa.Column("member", sa.String(_KEY_LENGTH), primary_key=True),
            **mysql_args,
        )
        self.meta = sa.Table(
            f"{prefix}meta",
            self.metadata,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(255), nullable=False),
            **mysql_args,
        )


class SQLResultBackend(ResultBackend):
    """A result backend on a SQL database; see the module docstring for the design."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(push_wait=False, durable=True)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        prefix = str(options.get("table_prefix", "polyq_"))
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"table_prefix={prefix!r}: use letters, digits and underscores (at most 31, "
                "not starting with a digit), e.g. table_prefix=myapp_"
            )
        self.prefix = prefix
        self._engine = _build_engine(url, options)
        self.dialect = self._engine.dialect.name
        self._is_pg = self.dialect == "postgresql"
        self._is_sqlite = self.dialect == "sqlite"
        self._listen = self._is_pg and bool(options.get("listen", True))
        default_poll = _SAFETY_POLL if self._listen else 0.1
        self.max_poll_interval = float(options.get("max_poll_interval", default_poll))
        self.tables = _Tables(prefix)
        self._channel = f"{prefix}results"
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._schema_ready = False
        # PostgreSQL waits: one LISTEN connection, pumped by whichever waiting thread
        # holds _listener_lock, which wakes the others through their events.
        self._listener: Any = None
        self._listener_lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._waiters_lock = threading.Lock()
        r = self.tables.results
        self._upsert = _upsert(self.dialect, r, ("value", "expires_at"))
        self._insert_ignore_result = _insert_ignore(self.dialect, r)
        self._insert_ignore_member = _insert_ignore(self.dialect, self.tables.members)
        self._insert_ignore_set = _insert_ignore(self.dialect, self.tables.sets)
        if self.dialect in ("mysql", "mariadb"):
            # INSERT IGNORE would take a shared lock on an existing row, and two adders
            # upgrading it to the exclusive lock of FOR UPDATE deadlock; ON DUPLICATE
            # KEY UPDATE takes the exclusive lock at once.
            sets = mysql.insert(self.tables.sets)
            self._insert_ignore_set = sets.on_duplicate_key_update(size=sets.table.c.size)

    # -- plumbing ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, rebuilt in a forked child."""
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    self._engine.dispose(close=False)  # the parent's connections stay its own
                    self._listener = None
                    self._pid = os.getpid()
        return self._engine

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError) as exc:
            detail = getattr(exc, "orig", None) or exc
            raise BrokerError(
                redact(f"{action} failed on {self.describe()}: {type(detail).__name__}: {detail}")
            ) from exc

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        self.ensure_schema()
        with self._errors(action), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        self.ensure_schema()
        with self._errors(action), self.engine.connect() as conn:
            conn.execution_options(polyq_read_only=True)
            with conn.begin():
                yield conn

    def describe(self) -> str:
        """The URL with its password hidden, and the table prefix."""
        return f"{redact(self.url)} (tables {self.prefix}*)"

    def _check_key(self, key: str) -> None:
        if len(key) > _KEY_LENGTH:
            raise ValueError(f"result key longer than {_KEY_LENGTH} characters: {key[:40]!r}...")

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
                        sa.select(meta.c.value).where(meta.c.name == "backend_schema_version")
                    ).scalar()
        except sa.exc.DBAPIError:  # no tables yet, or no database: create_schema says
            found = None
        if found is not None and int(found) == SCHEMA_VERSION:
            self._schema_ready = True
        else:
            self.create_schema()

    def create_schema(self) -> None:
        """Create the tables and version row if missing (idempotent, race-safe);
        ``polyq db init`` calls this."""
        name = f"polyq_schema_{self.prefix}"
        with self._errors("creating the polyq result tables"), self.engine.begin() as conn:
            if self._is_pg:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
            elif not self._is_sqlite:
                conn.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": name})
            self.tables.metadata.create_all(conn, checkfirst=True)
            meta = self.tables.meta
            found = conn.execute(
                sa.select(meta.c.value).where(meta.c.name == "backend_schema_version")
            ).scalar()
            if found is None:
                conn.execute(
                    _insert_ignore(self.dialect, meta),
                    {"name": "backend_schema_version", "value": str(SCHEMA_VERSION)},
                )
            elif int(found) > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the database holds polyq result schema {found}, newer than this polyq "
                    f"understands ({SCHEMA_VERSION}); upgrade polyq on this machine"
                )
            if not self._is_pg and not self._is_sqlite:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        self._schema_ready = True

    def drop_schema(self) -> None:
        """Drop this prefix's result tables (tests, uninstall). Leaves ``<prefix>meta``
        when other tables of the prefix (the transport's) still use it."""
        with self._errors("dropping the polyq result tables"), self.engine.begin() as conn:
            t = self.tables
            for table in (t.results, t.sets, t.members):
                table.drop(conn, checkfirst=True)
            if t.meta.name in sa.inspect(conn).get_table_names():
                conn.execute(sa.delete(t.meta).where(t.meta.c.name == "backend_schema_version"))
        self._schema_ready = False

    # -- key-value -----------------------------------------------------------------

    def _live(self, expires_at: sa.ColumnElement[Any], now: float) -> sa.ColumnElement[bool]:
        return sa.or_(expires_at.is_(None), expires_at > now)

    def get(self, key: str) -> bytes | None:
        """The live value under ``key``, or ``None``."""
        r = self.tables.results.c
        stmt = sa.select(r.value).where(r.key == key, self._live(r.expires_at, time.time()))
        with self._read("reading a result") as conn:
            value = conn.execute(stmt).scalar()
        return None if value is None else bytes(value)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Live values of ``keys`` (one query)."""
        if not keys:
            return {}
        r = self.tables.results.c
        stmt = sa.select(r.key, r.value).where(
            r.key.in_(list(keys)), self._live(r.expires_at, time.time())
        )
        with self._read("reading results") as conn:
            return {row.key: bytes(row.value) for row in conn.execute(stmt)}

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (replacing any) and wake its waiters."""
        self.set_many([(key, value)], ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        """Store every ``(key, value)`` in one transaction."""
        if not items:
            return
        for key, _ in items:
            self._check_key(key)
        expires_at = None if ttl is None else time.time() + ttl
        rows = [{"key": k, "value": bytes(v), "expires_at": expires_at} for k, v in items]
        with self._write("storing a result") as conn:
            conn.execute(self._upsert, rows)
            if self._is_pg:
                for key in dict.fromkeys(k for k, _ in items):
                    conn.execute(
                        sa.text("SELECT pg_notify(:c, :k)"), {"c": self._channel, "k": key}
                    )

    def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys``, and any sets under them."""
        if not keys:
            return
        t = self.tables
        keys = list(keys)
        with self._write("deleting results") as conn:
            for table in (t.results, t.sets, t.members):
                conn.execute(sa.delete(table).where(table.c.key.in_(keys)))

    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value`` unless a live value is under ``key``; ``True`` if stored."""
        self._check_key(key)
        r = self.tables.results
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        with self._write("storing a result if absent") as conn:
            found = conn.execute(
                sa.select(r.c.expires_at).where(r.c.key == key).with_for_update()
            ).first()
            if found is None:
                # A concurrent caller inserting the same key makes this a no-op.
                stored = self._inserted(
                    conn,
                    self._insert_ignore_result,
                    {"key": key, "value": bytes(value), "expires_at": expires_at},
                )
            elif found.expires_at is not None and found.expires_at <= now:
                conn.execute(
                    sa.update(r)
                    .where(r.c.key == key)
                    .values(value=bytes(value), expires_at=expires_at)
                )
                stored = True
            else:
                stored = False
            if stored and self._is_pg:
                conn.execute(sa.text("SELECT pg_notify(:c, :k)"), {"c": self._channel, "k": key})
        return stored

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        """Add ``member`` to the set ``key``; return the set's size afterwards."""
        self._check_key(key)
        self._check_key(member)
        s = self.tables.sets
        m = self.tables.members
        now = time.time()
        with self._write("adding to a set") as conn:
            conn.execute(self._insert_ignore_set, {"key": key, "size": 0, "expires_at": None})
            # The set's row lock serialises adders of one set (SQLite: the write lock).
            head = conn.execute(
                sa.select(s.c.size, s.c.expires_at).where(s.c.key == key).with_for_update()
            ).one()
            size = head.size
            expires_at = head.expires_at
            if expires_at is not None and expires_at <= now:  # expired: start afresh
                conn.execute(sa.delete(m).where(m.c.key == key))
                size, expires_at = 0, None
            if self._inserted(conn, self._insert_ignore_member, {"key": key, "member": member}):
                size += 1
            if ttl is not None:
                expires_at = now + ttl
            conn.execute(
                sa.update(s).where(s.c.key == key).values(size=size, expires_at=expires_at)
            )
        return int(size)

    def _inserted(self, conn: Connection, stmt: Any, params: dict[str, Any]) -> bool:
        """Run an insert-ignore; whether it inserted. (psycopg reports no row count
        for SQLAlchemy's inserts, so RETURNING answers where the database has it.)"""
        if self._is_sqlite or self._is_pg:
            return conn.execute(stmt.returning(sa.literal(1)), params).first() is not None
        return bool(conn.execute(stmt, params).rowcount == 1)

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Live result keys starting with ``prefix``."""
        r = self.tables.results.c
        stmt = (
            sa.select(r.key)
            .where(r.key.startswith(prefix, autoescape=True), self._live(r.expires_at, time.time()))
            .order_by(r.key)
            .limit(limit)
        )
        with self._read("listing keys") as conn:
            return list(conn.execute(stmt).scalars())

    def cleanup(self) -> int:
        """Delete expired values and sets now (``polyq db cleanup``); return how many
        values and sets were removed."""
        t = self.tables
        now = time.time()
        with self._write("cleaning up results") as conn:
            removed = conn.execute(
                sa.delete(t.results).where(t.results.c.expires_at <= now)
            ).rowcount
            expired = sa.select(t.sets.c.key).where(t.sets.c.expires_at <= now)
            if self._is_sqlite or self._is_pg:
                conn.execute(sa.delete(t.members).where(t.members.c.key.in_(expired)))
            else:  # MySQL cannot delete from a table with a sub-select on another in one go
                stale = list(conn.execute(expired).scalars())
                if stale:
                    conn.execute(sa.delete(t.members).where(t.members.c.key.in_(stale)))
            removed += conn.execute(sa.delete(t.sets).where(t.sets.c.expires_at <= now)).rowcount
        return int(removed)

    # -- waiting -------------------------------------------------------------------

    def wait(self, key: str, timeout: float) -> bytes | None:
        """The value under ``key`` as soon as it is set, waiting up to ``timeout`` s:
        woken by NOTIFY on PostgreSQL, else polling from 5 ms up to
        ``max_poll_interval``."""
        if not self._listen:
            return self._poll(key, timeout)
        deadline = time.monotonic() + timeout
        event = threading.Event()
        with self._waiters_lock:
            self._waiters.setdefault(key, set()).add(event)
        try:
            try:
                self._listening()  # LISTEN before the first read: no set() slips between
            except Exception:
                self._drop_listener()
                return self._poll(key, timeout)
            next_check = 0.0
            while True:
                now = time.monotonic()
                if event.is_set() or now >= next_check:
                    event.clear()
                    value = self.get(key)
                    if value is not None:
                        return value
                    next_check = now + self.max_poll_interval
                remaining = deadline - now
                if remaining <= 0:
                    return None
                self._pump(event, min(remaining, next_check - now))
        finally:
            with self._waiters_lock:
                events = self._waiters.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[key]

    def _poll(self, key: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            value = self.get(key)
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, self.max_poll_interval)

    def _pump(self, event: threading.Event, timeout: float) -> None:
        """Read notifications for up to ``timeout`` s (or until ``event`` is set) and
        wake the waiters they name; a thread that cannot pump waits on its event."""
        if not self._listener_lock.acquire(blocking=False):
            event.wait(min(timeout, 0.05))
            return
        try:
            listener = self._listener
            if listener is None:
                event.wait(min(timeout, 0.05))
                return
            deadline = time.monotonic() + timeout
            while not event.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                for notify in listener.notifies(timeout=min(remaining, 0.05), stop_after=1):
                    with self._waiters_lock:
                        for waiter in self._waiters.get(notify.payload, ()):
                            waiter.set()
        except Exception:
            self._drop_listener()  # broken connection: the safety poll carries on
        finally:
            self._listener_lock.release()

    def _listening(self) -> Any:
        with self._lock:
            if self._listener is None:
                engine = self.engine
                cargs, cparams = engine.dialect.create_connect_args(engine.url)
                conn = engine.dialect.connect(*cargs, **cparams)
                conn.autocommit = True
                conn.execute(f'LISTEN "{self._channel}"')
                self._listener = conn
            return self._listener

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled and listening connections (idempotent)."""
        self._drop_listener()
        if os.getpid() == self._pid:
            self._engine.dispose()


def _insert_ignore(dialect: str, table: sa.Table) -> Any:
    """``INSERT`` that silently skips a row whose primary key exists."""
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return pg.insert(table).on_conflict_do_nothing()
    return sa.insert(table).prefix_with("IGNORE")


def _upsert(dialect: str, table: sa.Table, columns: Sequence[str]) -> Any:
    """``INSERT`` that replaces ``columns`` of an existing row with the same key."""
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert(table) if dialect == "sqlite" else pg.insert(table)
        return insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={name: insert.excluded[name] for name in columns},
        )
    my_insert = mysql.insert(table)
    return my_insert.on_duplicate_key_update({name: my_insert.inserted[name] for name in columns})
