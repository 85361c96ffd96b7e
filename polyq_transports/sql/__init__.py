"""SQL transport (SQLite, PostgreSQL, MySQL/MariaDB through SQLAlchemy).

Modules: :mod:`.transport` (the contract methods and the hot path), :mod:`.statements`
(its hand-written SQL), :mod:`.schema` (tables, indexes, upgrades), :mod:`.notify`
(PostgreSQL LISTEN/NOTIFY), :mod:`.queues`, :mod:`.dead_letters`, :mod:`.broadcast`.
The engine and URL handling it shares with the SQL result backend live in
:mod:`polyq_clients.sql` (re-exported here). Design: ``docs/design/sql.md``.
"""

from polyq_clients.sql import (
    SQLDatabase,
    build_engine,
    engine_url,
    insert_ignore,
    is_deadlock,
    table_prefix,
)
from polyq_transports.sql.broadcast import SQLSubscription
from polyq_transports.sql.schema import SCHEMA_VERSION
from polyq_transports.sql.transport import SQLTransport

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
