"""Transactional enqueue through the app: a task sent inside the application's own
database transaction exists if and only if that transaction commits."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from polyq.registry import create_backend, create_transport
from polyq.testing import services
from polyq.testing.e2e_tasks import app, read_records, record
from polyq.testing.worker import WorkerProcess


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        base = services.sqlite_url(tmp_path)
    else:
        base = services.postgres_url()
    prefix = f"tx{uuid.uuid4().hex[:8]}_"
    url = f"{base}{'&' if '?' in base else '?'}table_prefix={prefix}"
    app.conf.update(broker_url=url, result_backend=url, task_default_queue="orders")
    app.close()
    # As `polyq db init` does: on SQLite the tables cannot be created while the
    # application's own transaction holds the write lock.
    app.transport.create_schema()  # type: ignore[attr-defined]
    app.backend.create_schema()  # type: ignore[attr-defined]
    yield url
    app.close()
    for part in (create_transport(url), create_backend(url)):
        part.drop_schema()  # type: ignore[attr-defined]
        part.close()


def _engine(url: str) -> sa.Engine:
    plain = url.split("?")[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(plain)


def _orders(engine: sa.Engine, name: str) -> sa.Table:
    table = sa.Table(name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    table.create(engine)
    return table


def _commit_then_die(url: str, path: str, orders_name: str, result_file: str) -> None:
    app.conf.update(broker_url=url, result_backend=url, task_default_queue="orders")
    app.close()
    engine = _engine(url)
    orders = sa.Table(orders_name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        conn.begin()
        conn.execute(orders.insert().values(id=1))
        result = record.apply_async((path, 0.0, "order 1"), connection=conn)
        with open(result_file, "w") as f:
            json.dump(result.id, f)
        conn.commit()
    os.kill(os.getpid(), signal.SIGKILL)  # dies right after COMMIT, before anything else


def test_rollback_sends_nothing_and_commit_sends_once(db_url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "runs.jsonl")
    engine = _engine(db_url)
    orders = _orders(engine, f"orders_{uuid.uuid4().hex[:8]}")
    try:
        with engine.connect() as conn:
            conn.begin()
            conn.execute(orders.insert().values(id=1))
            record.apply_async((path, 0.0, "rolled back"), connection=conn)
            assert app.transport.size("orders") == 0, "visible before the commit"
            conn.rollback()
        with engine.connect() as conn:
            conn.begin()
            conn.execute(orders.insert().values(id=2))
            kept = record.apply_async((path, 0.0, "committed"), connection=conn)
            conn.commit()
        env = {
            "POLYQ_BROKER_URL": db_url,
            "POLYQ_RESULT_BACKEND": db_url,
            "POLYQ_TASK_DEFAULT_QUEUE": "orders",
        }
        with WorkerProcess("polyq.testing.e2e_tasks", ["-Q", "orders", "-c", "1"], env=env):
            assert kept.get(timeout=30) == "committed"
        runs = read_records(path)
        assert [r["id"] for r in runs] == [kept.id], "only the committed order's task ran"
    finally:
        orders.drop(engine)
        engine.dispose()


def test_producer_killed_right_after_commit_still_gets_its_task_run(
    db_url: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "runs.jsonl")
    result_file = str(tmp_path / "task_id.json")
    engine = _engine(db_url)
    orders = _orders(engine, f"orders_{uuid.uuid4().hex[:8]}")
    try:
        producer = multiprocessing.get_context("spawn").Process(
            target=_commit_then_die, args=(db_url, path, orders.name, result_file)
        )
        producer.start()
        producer.join(60)
        assert producer.exitcode == -signal.SIGKILL
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar() == 1
        with open(result_file) as f:
            task_id = json.load(f)
        env = {
            "POLYQ_BROKER_URL": db_url,
            "POLYQ_RESULT_BACKEND": db_url,
            "POLYQ_TASK_DEFAULT_QUEUE": "orders",
        }
        with WorkerProcess("polyq.testing.e2e_tasks", ["-Q", "orders", "-c", "1"], env=env):
            assert app.AsyncResult(task_id).get(timeout=30) == "order 1"
        assert [r["id"] for r in read_records(path)] == [task_id]
    finally:
        orders.drop(engine)
        engine.dispose()
