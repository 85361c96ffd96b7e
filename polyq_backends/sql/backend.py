"""The SQL result backend: results, sets and locks in SQLite, PostgreSQL or MySQL/MariaDB.

The engine, URLs and error handling are :mod:`polyq_clients.sql`'s (shared with the SQL
transport). ``get``, ``set``, ``set_if_absent`` and ``add_to_set`` run hand-written SQL
on the pooled DBAPI connection; on PostgreSQL ``wait`` is woken by LISTEN/NOTIFY. Tables,
set semantics and options: ``docs/design/sql.md``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from polyq.backend import BackendCapabilities, ResultBackend, final_mark
from polyq.exceptions import BrokerError, ConfigurationError
from polyq_clients.sql import SQLDatabase, insert_ignore, is_deadlock, table_prefix

from .tables import KEY_LENGTH, Tables

__all__ = ["SCHEMA_VERSION", "SQLResultBackend"]

#: Version of the tables this module reads and writes (``<prefix>meta``).
SCHEMA_VERSION = 1

#: Keys per statement of the bulk operations: under every database's limit on bind
#: parameters (PostgreSQL 65,535; SQLite 32,766, 999 before 3.32), so a chord of
#: 100,000 members reads its results in 200 statements instead of failing in one.
_BULK = 500
_SAFETY_POLL = 1.0


class SQLResultBackend(ResultBackend):
    """A result backend on a SQL database; see ``docs/design/sql.md`` for the design."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        push_wait=False,
        durable=True,
        # Bulk reads and deletes go _BULK keys per statement: no size limit of its
        # own (the conformance suite proves 100,000 members).
        max_chord_size=None,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.prefix = prefix = table_prefix(options)
        self.db = SQLDatabase(url, options, prefix, on_fork=self._forget_listener)
        self.dialect = self.db.dialect
        self._is_pg = self.db.is_pg
        self._is_sqlite = self.db.is_sqlite
        # LISTEN needs psycopg 3 (postgresql+psycopg2:// URLs simply poll).
        self._listen = (
            self._is_pg
            and self.db.engine.dialect.driver == "psycopg"
            and bool(options.get("listen", True))
        )
        default_poll = _SAFETY_POLL if self._listen else 0.1
        self.max_poll_interval = float(options.get("max_poll_interval", default_poll))
        self.tables = Tables(prefix)
        self._channel = f"{prefix}results"
        self._lock = threading.RLock()
        self._schema_ready = False
        # PostgreSQL waits: one LISTEN connection, pumped by whichever waiting thread
        # holds _listener_lock, which wakes the others through their events.
        self._listener: Any = None
        self._listener_active = False
        self._listener_lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._waiters_lock = threading.Lock()
        self._is_mysql = not (self._is_pg or self._is_sqlite)
        self._dbapi_error = self.db.dbapi_error
        self._build_sql()

    # -- plumbing ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, rebuilt in a forked child."""
        return self.db.engine

    def _forget_listener(self) -> None:
        # In a forked child: the LISTEN connection is the parent's to close and
        # listens for the parent only; the waiters are the parent's threads, and a
        # lock one of them held at the fork would stay held here for ever.
        self._listener = None
        self._listener_active = False
        self._listener_lock = threading.Lock()
        self._waiters = {}
        self._waiters_lock = threading.Lock()
        self._lock = threading.RLock()

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return self.db.errors(action)

    def _write(self, action: str) -> contextlib.AbstractContextManager[Connection]:
        self.ensure_schema()
        return self.db.write(action)

    def _read(self, action: str) -> contextlib.AbstractContextManager[Connection]:
        self.ensure_schema()
        return self.db.read(action)

    def describe(self) -> str:
        """The URL with its password hidden (for SQLite, the absolute path of the
        file, so that processes started in different directories can compare),
        and the table prefix."""
        return self.db.describe()

    def _check_key(self, key: str) -> None:
        if len(key) > KEY_LENGTH:
            raise ValueError(f"result key longer than {KEY_LENGTH} characters: {key[:40]!r}...")

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
                    insert_ignore(self.dialect, meta),
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
        """Drop this prefix's result tables (tests, uninstall); ``<prefix>meta`` goes
        too once no transport tables use it."""
        t = self.tables
        with self._errors("dropping the polyq result tables"), self.engine.begin() as conn:
            for table in (t.results, t.sets, t.members):
                table.drop(conn, checkfirst=True)
            if sa.inspect(conn).has_table(t.meta.name):
                conn.execute(sa.delete(t.meta).where(t.meta.c.name == "backend_schema_version"))
                if conn.execute(sa.select(sa.func.count()).select_from(t.meta)).scalar_one() == 0:
                    t.meta.drop(conn)
        self._schema_ready = False

    # -- SQL -----------------------------------------------------------------------
    #
    # get, set, set_if_absent and add_to_set run hand-written SQL on the pooled DBAPI
    # connection (through SQLAlchemy Core a SQLite read costs ~5x more). "?" marks
    # become the driver's "%s" where needed.

    def _sql(self, sql: str) -> str:
        return sql if self._is_sqlite else sql.replace("?", "%s")

    def _build_sql(self) -> None:
        r, s, m = self.tables.results.name, self.tables.sets.name, self.tables.members.name
        live = "(expires_at IS NULL OR expires_at > ?)"
        lock = "" if self._is_sqlite else " FOR UPDATE"  # SQLite: the write lock
        self._get_sql = self._sql(f"SELECT value FROM {r} WHERE name = ? AND {live}")
        self._lock_result_sql = self._sql(f"SELECT expires_at FROM {r} WHERE name = ?{lock}")
        self._update_result_sql = self._sql(
            f"UPDATE {r} SET value = ?, expires_at = ? WHERE name = ?"
        )
        self._size_sql = self._sql(f"SELECT size, expires_at FROM {s} WHERE name = ?{lock}")
        self._clear_set_sql = self._sql(f"DELETE FROM {m} WHERE name = ?")
        self._resize_sql = self._sql(f"UPDATE {s} SET size = ?, expires_at = ? WHERE name = ?")
        self._get_many_sql = f"SELECT name, value FROM {r} WHERE name IN ({{marks}}) AND {live}"
        self._get_many_cache: dict[int, str] = {}
        if self._is_mysql:
            self._set_sql = self._sql(
                f"INSERT INTO {r} (name, value, expires_at) VALUES (?, ?, ?) "
                "ON DUPLICATE KEY UPDATE value = VALUES(value), expires_at = VALUES(expires_at)"
            )
            self._add_result_sql = self._sql(
                f"INSERT IGNORE INTO {r} (name, value, expires_at) VALUES (?, ?, ?)"
            )
            self._open_result_sql = self._sql(
                f"INSERT INTO {r} (name, value, expires_at) VALUES (?, ?, ?) "
                "ON DUPLICATE KEY UPDATE name = name"
            )
            # ON DUPLICATE KEY UPDATE (not INSERT IGNORE) takes the row's exclusive lock at
            # once: two adders upgrading a shared lock would deadlock.
            self._open_set_sql = self._sql(
                f"INSERT INTO {s} (name, size, expires_at) VALUES (?, 0, NULL) "
                "ON DUPLICATE KEY UPDATE size = size"
            )
            self._add_member_sql = self._sql(f"INSERT IGNORE INTO {m} (name, item) VALUES (?, ?)")
        else:
            self._set_sql = self._sql(
                f"INSERT INTO {r} (name, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
            )
            self._add_result_sql = self._sql(
                f"INSERT INTO {r} (name, value, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
            )
            self._open_result_sql = self._add_result_sql
            self._open_set_sql = self._sql(
                f"INSERT INTO {s} (name, size, expires_at) VALUES (?, 0, NULL) "
                "ON CONFLICT DO NOTHING"
            )
            self._add_member_sql = self._sql(
                f"INSERT INTO {m} (name, item) VALUES (?, ?) ON CONFLICT DO NOTHING"
            )

    def _raw(self, action: str, write: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A DBAPI cursor in a transaction (see :meth:`SQLDatabase.cursor`)."""
        self.ensure_schema()
        return self.db.cursor(action, write)

    def _retrying(self, action: str, work: Any) -> Any:
        """Run ``work(cursor)`` in a write transaction, again if the database chose it
        as a deadlock victim (MySQL/MariaDB 1213, PostgreSQL 40P01) — rare with the
        lock order used here, but a database may still pick one."""
        for attempt in range(3):
            try:
                with self._raw(action) as cursor:
                    return work(cursor)
            except BrokerError as exc:
                if attempt == 2 or not is_deadlock(exc.__cause__):
                    raise
        raise AssertionError("unreachable")

    def _notify(self, cursor: Any, keys: Sequence[str]) -> None:
        if self._is_pg:
            unique = list(dict.fromkeys(keys))
            if len(unique) == 1:
                cursor.execute("SELECT pg_notify(%s, %s)", (self._channel, unique[0]))
            else:  # one statement for a bulk write, whatever its size
                cursor.execute(
                    "SELECT pg_notify(%s, k) FROM unnest(%s::text[]) AS k", (self._channel, unique)
                )

    # -- key-value -----------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The live value under ``key``, or ``None``."""
        with self._raw("reading a result", write=False) as cursor:
            cursor.execute(self._get_sql, (key, time.time()))
            row = cursor.fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Live values of ``keys`` (one query per ``_BULK`` keys, in one transaction)."""
        if not keys:
            return {}
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        now = time.time()
        with self._raw("reading results", write=False) as cursor:
            for start in range(0, len(keys), _BULK):
                chunk = keys[start : start + _BULK]
                cursor.execute(self._get_many_text(len(chunk)), (*chunk, now))
                found.update((name, bytes(value)) for name, value in cursor.fetchall())
        return found

    def _get_many_text(self, count: int) -> str:
        sql = self._get_many_cache.get(count)
        if sql is None:
            sql = self._sql(self._get_many_sql.format(marks=", ".join(["?"] * count)))
            self._get_many_cache[count] = sql
        return sql

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
        rows = [(k, bytes(v), expires_at) for k, v in items]
        with self._raw("storing a result") as cursor:
            if len(rows) == 1:
                cursor.execute(self._set_sql, rows[0])
            else:
                cursor.executemany(self._set_sql, rows)
            self._notify(cursor, [k for k, _ in items])

    def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys``, and any sets under them."""
        if not keys:
            return
        t = self.tables
        keys = list(dict.fromkeys(keys))
        with self._write("deleting results") as conn:
            for start in range(0, len(keys), _BULK):
                chunk = keys[start : start + _BULK]
                for table in (t.results, t.sets, t.members):
                    conn.execute(sa.delete(table).where(table.c.name.in_(chunk)))

    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value`` unless a live value is under ``key``; ``True`` if stored."""
        self._check_key(key)

        def work(cursor: Any) -> bool:
            now = time.time()
            expires_at = None if ttl is None else now + ttl
            cursor.execute(self._lock_result_sql, (key,))
            found = cursor.fetchone()
            if found is None:
                # A concurrent caller inserting the same key makes this a no-op.
                cursor.execute(self._add_result_sql, (key, bytes(value), expires_at))
                stored = bool(cursor.rowcount == 1)
            elif found[0] is not None and found[0] <= now:  # expired: take it over
                cursor.execute(self._update_result_sql, (bytes(value), expires_at, key))
                stored = True
            else:
                stored = False
            if stored:
                self._notify(cursor, [key])
            return stored

        return bool(self._retrying("storing a result if absent", work))

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        """Store a state unless the final mark (a row under :func:`final_mark`) is
        live, holding the state row's lock while reading the mark and writing
        (``docs/design/sql.md``)."""
        mark = final_mark(key)
        self._check_key(mark)

        def work(cursor: Any) -> bool:
            now = time.time()
            expires_at = None if ttl is None else now + ttl
            inserted = False
            for _ in range(100):
                cursor.execute(self._lock_result_sql, (key,))
                if cursor.fetchone() is not None:
                    break
                # No row to lock: insert ours (locked until commit), or lock a
                # concurrent one on the next turn. MySQL's insert takes the lock
                # even as a no-op, and its row count cannot tell which it was.
                cursor.execute(self._open_result_sql, (key, bytes(value), expires_at))
                if cursor.rowcount == 1 and not self._is_mysql:
                    inserted = True
                    break
            else:
                raise BrokerError(f"could not lock the result row {key!r}: it keeps vanishing")
            cursor.execute(self._get_sql, (mark, now))
            if cursor.fetchone() is not None:
                return False  # (a row inserted above stays only if deleted sans mark)
            if not inserted:
                cursor.execute(self._update_result_sql, (bytes(value), expires_at, key))
            if final:
                cursor.execute(self._set_sql, (mark, b"1", expires_at))
            self._notify(cursor, [key])
            return True

        return bool(self._retrying("storing a task state", work))

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        """Add ``member`` to the set ``key``; return the set's size afterwards."""
        self._check_key(key)
        self._check_key(member)

        def work(cursor: Any) -> int:
            now = time.time()
            cursor.execute(self._open_set_sql, (key,))
            # The set's row lock serialises adders of one set (SQLite: the write lock).
            cursor.execute(self._size_sql, (key,))
            size, expires_at = cursor.fetchone()
            if expires_at is not None and expires_at <= now:  # expired: start afresh
                cursor.execute(self._clear_set_sql, (key,))
                size, expires_at = 0, None
            cursor.execute(self._add_member_sql, (key, member))
            if cursor.rowcount == 1:
                size += 1
            if ttl is not None:
                expires_at = now + ttl
            cursor.execute(self._resize_sql, (size, expires_at, key))
            return int(size)

        return int(self._retrying("adding to a set", work))

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Live result keys starting with ``prefix``."""
        r = self.tables.results.c
        live = sa.or_(r.expires_at.is_(None), r.expires_at > time.time())
        stmt = (
            sa.select(r.name)
            .where(r.name.startswith(prefix, autoescape=True), live)
            .order_by(r.name)
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
            expired = sa.select(t.sets.c.name).where(t.sets.c.expires_at <= now)
            stale = list(conn.execute(expired).scalars())
            for start in range(0, len(stale), 500):
                chunk = stale[start : start + 500]
                conn.execute(sa.delete(t.members).where(t.members.c.name.in_(chunk)))
            removed += conn.execute(sa.delete(t.sets).where(t.sets.c.expires_at <= now)).rowcount
        return int(removed)

    # -- waiting -------------------------------------------------------------------

    def wait(self, key: str, timeout: float) -> bytes | None:
        """The value under ``key`` as soon as it is set, waiting up to ``timeout`` s:
        woken by NOTIFY on PostgreSQL, else polling from 1 ms up to
        ``max_poll_interval``."""
        if not self._listen:
            return self._poll(key, timeout)
        self.db.check_fork()  # before the waiter tables are touched (see _forget_listener)
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
            self._unlisten_when_idle()

    def _poll(self, key: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        # Short first pauses: a result stored a few ms after the wait began is seen
        # within about a ms, not at the end of a 5-10 ms step.
        pause = 0.001
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
                self._listener = conn
            if not self._listener_active:
                self._listener.execute(f'LISTEN "{self._channel}"')
                self._listener_active = True
            return self._listener

    def _unlisten_when_idle(self) -> None:
        """UNLISTEN once no thread waits: PostgreSQL keeps notifications in one
        server-wide queue, which a listener that never reads would let grow. The
        connection stays open for the next wait (LISTEN is one round trip, a new
        connection many)."""
        if not self._listener_lock.acquire(blocking=False):
            return  # a thread is pumping: it has waiters, the last one to leave cleans up
        try:
            with self._lock:
                with self._waiters_lock:
                    if self._waiters:
                        return
                if self._listener is not None and self._listener_active:
                    self._listener.execute(f'UNLISTEN "{self._channel}"')
                    for _ in self._listener.notifies(timeout=0):
                        pass
                    self._listener_active = False
        except Exception:
            self._drop_listener()
        finally:
            self._listener_lock.release()

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        self._listener_active = False
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled and listening connections (idempotent)."""
        self._drop_listener()
        self.db.close()
