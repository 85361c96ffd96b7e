"""PostgreSQL LISTEN/NOTIFY for the SQL transport: idle receivers wait on a LISTEN
connection that ``publish``'s NOTIFY wakes at once (see ``docs/design/sql.md``)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import sqlalchemy as sa

from polyq_clients.sql import SQLDatabase

__all__ = ["MIN_POLL", "Listener"]

#: The first pause of a poll: a message or result arriving a few ms after the poll
#: began is seen within a ms or two instead of waiting out a 5-10 ms step; the
#: doubling reaches the long pauses of an idle poll after a few reads.
MIN_POLL = 0.001


class Listener:
    """One LISTEN connection on ``channel`` per transport, opened on first wait and
    used by one thread at a time (the others sleep instead)."""

    def __init__(self, db: SQLDatabase, channel: str) -> None:
        self._db = db
        self.channel = channel
        #: The psycopg connection LISTENing, or ``None`` until the first wait.
        self.connection: Any = None
        self._lock = threading.Lock()
        self._last_drain = 0.0

    def forget(self) -> None:
        """In a forked child: the LISTEN connection is the parent's to close, and a
        parent thread waiting on it at the fork would leave its lock held for ever."""
        self.connection = None
        self._lock = threading.Lock()

    def wait(self, queues: list[str], timeout: float) -> bool:
        """PostgreSQL: wait up to ``timeout`` for a NOTIFY naming one of ``queues``."""
        if not self._lock.acquire(blocking=False):
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
            self.drop()
            if isinstance(exc, sa.exc.SQLAlchemyError | OSError) or type(exc).__module__.startswith(
                "psycopg"
            ):
                time.sleep(min(timeout, 0.1))
                return False
            raise
        finally:
            self._lock.release()

    def drain(self) -> None:
        """Read the notifications a busy consumer left unread (about once a second):
        PostgreSQL keeps them in one queue shared by the whole server, which a
        listener that never reads would let grow."""
        now = time.monotonic()
        if now - self._last_drain < 1.0 or not self._lock.acquire(blocking=False):
            return
        try:
            self._last_drain = now
            if self.connection is not None:
                for _ in self.connection.notifies(timeout=0):
                    pass
        except Exception:
            self.drop()
        finally:
            self._lock.release()

    def _listening(self) -> Any:
        if self.connection is None:
            engine = self._db.engine
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            conn = engine.dialect.connect(*cargs, **cparams)
            conn.autocommit = True
            conn.execute(f'LISTEN "{self.channel}"')
            self.connection = conn
        return self.connection

    def drop(self) -> None:
        """Close the LISTEN connection (a broken one, or at ``close``)."""
        listener, self.connection = self.connection, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()
