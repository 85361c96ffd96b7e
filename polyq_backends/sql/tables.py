"""The SQL result backend's tables, for one table prefix (per instance: no global
metadata): results, sets and their members, and the schema version."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["KEY_LENGTH", "Tables"]

#: The longest key (task id with its prefix, set name, member) the tables hold.
KEY_LENGTH = 255


class Tables:
    """The backend's tables for one prefix (per instance: no global metadata)."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        mysql_args: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
        blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
        self.results = sa.Table(
            f"{prefix}results",
            self.metadata,
            sa.Column("name", sa.String(KEY_LENGTH), primary_key=True),
            sa.Column("value", blob, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=True, index=True),
            **mysql_args,
        )
        self.sets = sa.Table(
            f"{prefix}sets",
            self.metadata,
            sa.Column("name", sa.String(KEY_LENGTH), primary_key=True),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=True, index=True),
            **mysql_args,
        )
        self.members = sa.Table(
            f"{prefix}set_members",
            self.metadata,
            sa.Column("name", sa.String(KEY_LENGTH), primary_key=True),
            sa.Column("item", sa.String(KEY_LENGTH), primary_key=True),
            **mysql_args,
        )
        self.meta = sa.Table(
            f"{prefix}meta",
            self.metadata,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(255), nullable=False),
            **mysql_args,
        )
