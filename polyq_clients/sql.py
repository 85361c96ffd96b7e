"""SQL connection code the SQL transport and the SQL result backend share.

How polyq reads a SQL URL (:func:`engine_url`), builds the engine
(:func:`build_engine`: SQLite in WAL mode with ``BEGIN IMMEDIATE``, MySQL in READ
COMMITTED), and :class:`SQLDatabase`, which owns the engine, SQLite's per-thread
connections, transactions and the translation of driver errors into
:class:`~polyq.exceptions.BrokerError`. See ``docs/design/sql.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url

from polyq.exceptions import BrokerError, BrokerRefused, ConfigurationError
from polyq.url import redact, split_url
from polyq_clients import sql_tls

__all__ = [
    "SQLDatabase",
    "build_engine",
    "engine_url",
    "insert_ignore",
    "is_deadlock",
    "is_refusal",
    "table_prefix",
]

# Options of the SQL plugins (transport and backend); they are removed from the URL
# before the driver sees it (drivers reject unknown connection parameters).
_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "table_prefix",
        "max_poll_interval",
        "busy_timeout",
        "synchronous",
        "listen",
        "broadcast_ttl",
        "connect_timeout",
    }
)
_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,30}")


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL for a polyq SQL URL: explicit drivers (``postgresql://`` →
    ``postgresql+psycopg://``, ``mysql://`` → ``mysql+pymysql://``) and polyq's own
    options removed from the query string."""
    try:
        # Re-encoded first: a password typed with "@", "/", "?" or "#" in it is read
        # whole (polyq.url's rule), where SQLAlchemy would cut it at the first "@".
        parsed = make_url(url if url.lower().startswith("sqlite") else split_url(url).geturl())
    except ConfigurationError:
        raise
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
    if backend == "postgresql":
        sql_tls.check_postgres(target, url)
    elif backend in ("mysql", "mariadb"):
        target, kwargs["connect_args"] = sql_tls.mysql_connect_args(target, url)
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False}
        kwargs["poolclass"] = sa.QueuePool
    elif backend in ("mysql", "mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600
    if backend != "sqlite":
        # An unreachable server must fail within the connection timeout (the app's
        # broker_connection_timeout unless the URL says otherwise), not the OS's
        # TCP timeout. libpq counts whole seconds and treats under 2 as 2.
        timeout = float(options.get("connect_timeout", 4.0))
        seconds = max(2, math.ceil(timeout)) if backend == "postgresql" else max(timeout, 0.5)
        kwargs["connect_args"] = {"connect_timeout": seconds}
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
        """Turn driver errors inside the block into :class:`BrokerError`
        (:class:`BrokerRefused` for a final refusal: bad credentials, no such
        database). SQLAlchemy wraps the errors of statements, but a pool checkout
        (``raw_connection()``) raises the driver's own: both are caught."""
        try:
            yield
        except (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError) as exc:
            raise self._failed(action, getattr(exc, "orig", None) or exc) from exc
        except self.dbapi_error as exc:
            raise self._failed(action, exc) from exc

    def _failed(self, action: str, exc: BaseException) -> BrokerError:
        kind = BrokerRefused if is_refusal(exc) else BrokerError
        # libpq's messages span lines; an error is reported on one.
        detail = " ".join(str(exc).split())
        return kind(
            redact(
                f"{action} failed on {self.describe()}: {type(exc).__name__}: {detail}{_hint(exc)}"
            )
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


#: PostgreSQL SQLSTATEs of a final refusal: invalid authorization or password, no
#: such database, insufficient privilege to connect.
_PG_REFUSED = frozenset({"28000", "28P01", "3D000", "42501"})
#: MySQL/MariaDB error numbers of a final refusal: access denied (to the server, to
#: the database), unknown database, host not allowed, plugin auth refused.
_MYSQL_REFUSED = frozenset({1044, 1045, 1049, 1130, 1698, 1251})
_PG_REFUSAL_TEXT = (
    "password authentication failed",
    "no pg_hba.conf entry",
    'role "',  # role "x" does not exist
    'database "',  # database "x" does not exist
    "permission denied for database",
)


def is_refusal(exc: BaseException | None) -> bool:
    """Whether a driver error is a final refusal (bad credentials, unknown database,
    access denied) that no retry can fix."""
    if exc is None:
        return False
    code = getattr(exc, "sqlstate", None)
    if code in _PG_REFUSED:
        return True
    args = getattr(exc, "args", None) or ()
    if args and isinstance(args[0], int) and args[0] in _MYSQL_REFUSED:
        return True
    # libpq reports failed connections as text only (no SQLSTATE).
    text = str(exc).lower()
    return (
        "fatal:" in text
        and any(part in text for part in _PG_REFUSAL_TEXT)
        and (
            "does not exist" in text
            or "authentication" in text
            or "pg_hba" in text
            or "permission denied" in text
        )
    )


def is_deadlock(exc: BaseException | None) -> bool:
    """Whether a driver error is a deadlock the database resolved by aborting us
    (PostgreSQL 40P01, MySQL/MariaDB 1213): the transaction can simply run again."""
    code = getattr(exc, "sqlstate", None) or (getattr(exc, "args", None) or [None])[0]
    return code in ("40P01", 1213)


def insert_ignore(dialect: str, table: sa.Table) -> Any:
    """``INSERT`` that silently skips rows whose primary key exists."""
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return pg.insert(table).on_conflict_do_nothing()
    return sa.insert(table).prefix_with("IGNORE")
