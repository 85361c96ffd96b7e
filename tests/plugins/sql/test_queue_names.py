"""Queue names the SQL transport refuses because the database would take them for
another queue's name (issue 17): MySQL/MariaDB ignore trailing spaces, and a table
moved to a case-insensitive collation folds case; both made two queues share rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from polyq.exceptions import InvalidQueueName
from polyq.registry import create_transport
from polyq.testing import services
from polyq.transport import OutgoingMessage
from polyq_transports.sql import SQLTransport


def _msg(queue: str) -> OutgoingMessage:
    return OutgoingMessage(queue=queue, body=b"body", message_id=str(uuid.uuid4()))


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLTransport]:
    url = {
        "sqlite": lambda: services.sqlite_url(tmp_path),
        "postgres": services.postgres_url,
        "mysql": services.mysql_url,
    }[request.param]()
    t = create_transport(url, table_prefix=f"pqn{uuid.uuid4().hex[:8]}_")
    assert isinstance(t, SQLTransport)
    yield t
    t.drop_schema()
    t.close()


def test_a_trailing_space_is_refused_not_merged(transport: SQLTransport) -> None:
    transport.publish([_msg("payments")])
    with pytest.raises(InvalidQueueName, match="'payments '"):
        transport.publish([_msg("payments ")])
    with pytest.raises(InvalidQueueName, match="'payments '"):
        transport.receive(["payments "], 10, 0)
    # "payments" holds its one message and nothing else.
    got = transport.receive(["payments"], 10, 0)
    assert len(got) == 1


def test_names_equal_under_the_tables_collation_are_refused(transport: SQLTransport) -> None:
    if transport.dialect != "mysql":
        pytest.skip("only MySQL/MariaDB tables carry a collation a DBA may change")
    # A DBA moved the tables to a case-insensitive collation: "Payments" would now
    # read the rows of "payments".
    transport.create_schema()
    with transport.engine.begin() as conn:
        for table in (transport.tables.queues, transport.tables.messages):
            conn.execute(
                sa.text(
                    f"ALTER TABLE {table.name} CONVERT TO CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_general_ci"
                )
            )
    transport.publish([_msg("payments")])
    with pytest.raises(InvalidQueueName, match="collides with the existing queue 'payments'"):
        transport.publish([_msg("Payments")])
    with pytest.raises(InvalidQueueName, match="collides"):
        transport.receive(["PAYMENTS"], 10, 0)
    with transport.engine.connect() as conn:
        messages = transport.tables.messages
        count = conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one()
    assert count == 1  # nothing of the refused publish was written


def test_refused_inside_the_callers_transaction_too(transport: SQLTransport) -> None:
    transport.publish([_msg("payments")])
    with transport.engine.connect() as conn, pytest.raises(InvalidQueueName):
        with conn.begin():
            transport.publish([_msg("pay\nments")], connection=conn)
    assert transport.size("payments") == 1
