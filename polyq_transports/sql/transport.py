"""The SQL transport's contract methods: publish, receive (claim), ack, nack,
extend_lease, and the delegation of the rest to the package's other modules.

The hot path (``publish``, ``receive``, ``ack``, ``nack``, ``extend_lease``) runs the
hand-written SQL of :mod:`.statements` on the pooled DBAPI connection. Design:
``docs/design/sql.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy.engine import Connection, Engine
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
from polyq_clients.sql import SQLDatabase, is_deadlock, table_prefix
from polyq_transports.sql.broadcast import Broadcasts
from polyq_transports.sql.dead_letters import DeadLetters
from polyq_transports.sql.notify import MIN_POLL, Listener
from polyq_transports.sql.queues import Queues, register_queues
from polyq_transports.sql.schema import (
    DELAYED,
    LEASED,
    MAX_MESSAGE_SIZE,
    READY,
    Schema,
    Tables,
)
from polyq_transports.sql.statements import Statements, chunks, fence_params

__all__ = ["SQLTransport"]


class SQLTransport(Transport):
    """A transport on a SQL database (SQLite, PostgreSQL, MySQL/MariaDB); see
    ``docs/design/sql.md`` for the design and ``docs/brokers.md`` for the options."""

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
        exact_size=True,
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
        default_poll = 1.0 if self._is_pg else 0.1
        self.max_poll_interval = float(options.get("max_poll_interval", default_poll))
        self.broadcast_ttl = float(options.get("broadcast_ttl", 60.0))
        # LISTEN needs psycopg 3 (postgresql+psycopg2:// URLs simply poll).
        self._listen = (
            self._is_pg
            and self.db.engine.dialect.driver == "psycopg"
            and bool(options.get("listen", True))
        )
        self.tables = Tables(self.prefix)
        self.schema = Schema(self.db, self.tables, self.prefix)
        self._notify_channel = f"{self.prefix}messages"
        self._known_queues: set[str] = set()
        self._rotation = itertools.count()
        self._t = self.tables.messages.name
        self._statements = Statements(self.dialect, self.prefix, self._t)
        # Bound once: the hot path calls it several times per operation.
        self._sql = self._statements.sql
        self._probes = self._statements.probes  # rows per queue in the next_due probe
        self._notifier = Listener(self.db, self._notify_channel)
        self._queues = Queues(self.schema)
        self._dead_letters = DeadLetters(self.schema, self._statements, self._notify_channel)
        self._broadcasts = Broadcasts(
            self.schema, self.broadcast_ttl, self._listen, f"{self.prefix}broadcast"
        )

    # -- plumbing ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, rebuilt in a forked child (connections are never
        shared across ``fork``)."""
        return self.db.engine

    def _forget_listener(self) -> None:
        # In a forked child (SQLDatabase's on_fork).
        self._notifier.forget()

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return self.db.errors(action)

    def _raw(self, action: str, write: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A DBAPI cursor in a transaction (see :meth:`SQLDatabase.cursor`)."""
        self.ensure_schema()
        return self.db.cursor(action, write)

    def describe(self) -> str:
        """The URL with its password hidden (for SQLite, the absolute path of the
        file, so that processes started in different directories can compare),
        and the table prefix."""
        return self.db.describe()

    # -- schema (see .schema) --------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables unless they exist (checked once per instance, by a
        read that takes no write lock: a worker starting while another process
        holds SQLite's write lock does not wait for it)."""
        if self.schema.ready:
            return
        self.schema.ensure()

    def create_schema(self) -> None:
        """Create the tables, indexes and version row if missing (idempotent, safe
        when several processes do it at once), or upgrade an older schema;
        ``polyq db init`` calls this."""
        self.schema.create()

    def drop_schema(self) -> None:
        """Drop this prefix's transport tables and everything in them (tests,
        uninstall); ``<prefix>meta`` goes too once no result tables use it."""
        self.schema.drop()

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
        new_queues = [q for q in queues if q not in self._known_queues]
        connection = kwargs.get("connection")
        if connection is not None:
            self._publish_in(connection, rows, queues, new_queues)
            return
        with self._raw("publishing") as cursor:
            if new_queues:
                self._register(cursor, new_queues)
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
        new_queues: list[str],
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
                find_sql = self._sql("find_queue")
                register_queues(
                    lambda rows: connection.exec_driver_sql(self._sql("insert_queue"), rows),
                    lambda name: list(connection.exec_driver_sql(find_sql, (name,)).scalars()),
                    new_queues,
                    self.describe(),
                )
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
        new_queues = [q for q in queues if q not in self._known_queues]
        if new_queues:
            # A consumer registers its queues too: a worker of "payments " must not
            # drain "payments" (see .queues.register_queues).
            with self._raw("registering queues") as cursor:
                self._register(cursor, new_queues)
            self._known_queues.update(new_queues)
        deadline = time.monotonic() + max(wait, 0.0)
        pause = MIN_POLL
        if self._notifier.connection is not None:
            self._notifier.drain()
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
                    if self._notifier.wait(queues, nap):
                        break
                else:
                    time.sleep(nap)

    def _register(self, cursor: Any, names: list[str]) -> None:
        find_sql = self._sql("find_queue")

        def find(name: str) -> list[str]:
            cursor.execute(find_sql, (name,))
            return [row[0] for row in cursor.fetchall()]

        register_queues(
            lambda rows: cursor.executemany(self._sql("insert_queue"), rows),
            find,
            names,
            self.describe(),
        )

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

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages (one statement per 500); lost leases are ignored."""
        if not deliveries:
            return
        with self._raw("acking") as cursor:
            for chunk in chunks(deliveries):
                cursor.execute(self._sql("ack", len(chunk)), fence_params(chunk))

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Release the lease: ready now, or after ``delay`` seconds."""
        delay = max(float(delay), 0.0)
        state = DELAYED if delay > 0 else READY
        with self._raw("nacking") as cursor:
            self._lease_only(cursor)
            cursor.execute(
                self._sql("release", 1), (state, time.time() + delay, *fence_params([delivery]))
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
            for chunk in chunks(deliveries):
                cursor.execute(
                    self._sql("release", len(chunk)), (LEASED, lease_end, *fence_params(chunk))
                )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``<prefix>dead_letters`` with ``reason``."""
        self._dead_letters.dead_letter(delivery, reason)

    # -- queues (see .queues) ------------------------------------------------------

    def purge(self, queue: str) -> int:
        """Delete the waiting (ready and delayed) messages of ``queue``."""
        return self._queues.purge(queue)

    def size(self, queue: str) -> int:
        """Messages in ``queue``: ready, delayed and leased."""
        return self._queues.size(queue)

    def queues(self) -> list[str]:
        """Every queue published to through this database and prefix."""
        return self._queues.queues()

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first."""
        return self._queues.scheduled(queue, limit)

    # -- dead letters (see .dead_letters) --------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""
        return self._dead_letters.dead_letters(queue, limit)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to ``queue``, ready now, delivery count reset."""
        return self._dead_letters.replay_dead_letters(queue, message_ids)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue``."""
        return self._dead_letters.purge_dead_letters(queue)

    # -- broadcast (see .broadcast) --------------------------------------------------

    def broadcast(self, channel: str, body: bytes) -> None:
        """Store ``body`` for the subscribers of ``channel`` (kept ``broadcast_ttl``)."""
        self._broadcasts.broadcast(channel, body)

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``: a :class:`SQLSubscription` polling new rows."""
        return self._broadcasts.subscribe(channel)

    def cleanup(self) -> int:
        """Delete broadcast rows older than ``broadcast_ttl`` (``polyq db cleanup``);
        return how many were removed."""
        return self._broadcasts.cleanup()

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections (idempotent)."""
        self._notifier.drop()
        self.db.close()
