"""``sqlite://``, ``postgresql://``, ``mysql://`` results: the SQL result backend.

``backend`` holds the contract's methods, ``tables`` the schema; the engine, URLs and
error translation are :mod:`polyq_clients.sql`'s (shared with the SQL transport). The
design: docs/design/sql.md.
"""

from .backend import SCHEMA_VERSION, SQLResultBackend

__all__ = ["SCHEMA_VERSION", "SQLResultBackend"]
