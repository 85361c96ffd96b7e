"""The publish fast path: ``EVALSHA`` on an idle list of connections the transport
keeps for itself, rather than one checked out of redis-py's pool for every call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError

__all__ = ["IdleConnections"]

# Packed by hiredis straight away when it is installed (the redis extra brings it):
# redis-py's packer looks at every argument in Python first. A request is an array of
# bulk strings under RESP2 and RESP3 alike.
_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - redis-py then packs
    _pack_command = None


def _roundtrip(conn: Connection, command: tuple[Any, ...], reached: list[bool]) -> Any:
    # connect() first, as the pool does: a Sentinel connection finds the master there
    # (sending on an unconnected one would dial the default localhost:6379).
    reached.clear()
    conn.connect()  # redis-py retries connecting by itself (the client's retry)
    reached.append(True)
    if _pack_command is None:
        conn.send_command(*command)
    else:
        conn.send_packed_command([_pack_command(command)])
    return conn.read_response()


class IdleConnections:
    """Connections of one transport kept between publishes, one per thread that
    publishes at the same moment; dropped in a forked child. Off (``enabled`` false)
    when a ``max_connections`` cap is set, which only redis-py's pool can enforce:
    :meth:`evalsha` then goes through the pool."""

    def __init__(self, client: redis.Redis, enabled: bool) -> None:
        # Typed loosely on purpose: redis-py's pool attributes are loosely annotated.
        self._client: Any = client
        self.enabled = enabled
        #: Connections with no request in flight and nothing unread.
        self.idle: list[Connection] = []
        self._pid = os.getpid()

    def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` in one round trip on an idle connection of this transport.

        redis-py's own command path checks a connection out of its pool for every
        command (a lock, a ``poll()`` system call to look for stray data, metrics)
        and back in: more client time than the round trip itself for a small
        publish. A connection here goes back on the idle list only with its reply
        read in full, or disconnected (it reconnects on next use), so it never
        carries stray data. Connection errors are retried as the client's are (the
        ``retries`` option); a script missing after a server restart is loaded and
        run once more (it did not run).
        """
        if not self.enabled:
            return script(keys=keys, args=args)
        if self._pid != os.getpid():  # forked: never share the parent's sockets
            self.idle = []
            self._pid = os.getpid()
        idle = self.idle
        try:
            conn = idle.pop()
        except IndexError:
            pool = self._client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)

        reached: list[bool] = []

        def retryable(error: Exception) -> bool:
            # A failed connect() was retried inside already (retrying it here too
            # multiplied the attempts: 1.2 s to report a closed port), and refused
            # credentials stay refused.
            return bool(reached) and not isinstance(error, redis.AuthenticationError)

        def call(*command: Any) -> Any:
            return conn.retry.call_with_retry(
                lambda: _roundtrip(conn, command, reached),
                lambda _error: conn.disconnect(),
                is_retryable=retryable,
            )

        try:
            try:
                return call("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                call("SCRIPT", "LOAD", script.script)
                return call("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.ResponseError:
            raise  # a whole error reply was read: the connection is clean
        except BaseException:
            conn.disconnect()
            raise
        finally:
            idle.append(conn)

    def close(self) -> None:
        """Disconnect the idle connections (not in a forked child: they are the
        parent's); idempotent."""
        idle, self.idle = self.idle, []
        if self._pid == os.getpid():
            for conn in idle:
                with contextlib.suppress(redis.RedisError, OSError):
                    conn.disconnect()
