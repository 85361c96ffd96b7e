"""SQL-transport behaviour beyond the conformance suite: query plans, several
processes on one SQLite file, fork safety, table prefixes, transactional
enqueue, schema versions, idle cost and crash durability.

SQLite runs on a temporary file; PostgreSQL and MySQL/MariaDB run on the shared
servers (``POLYQ_TEST_POSTGRES_URL`` / ``POLYQ_TEST_MYSQL_URL``) in tables with a
unique prefix, dropped after each test.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from polyq.exceptions import BrokerError, ConfigurationError
from polyq.registry import create_transport
from polyq.testing import services
from polyq.transport import OutgoingMessage
from polyq_transports.sql import SQLTransport, engine_url


def _msg(queue: str, **fields: object) -> OutgoingMessage:
    fields.setdefault("message_id", str(uuid.uuid4()))
    return OutgoingMessage(queue=queue, body=b"body", **fields)  # type: ignore[arg-type]


def _prefix() -> str:
    return f"pqs{uuid.uuid4().hex[:8]}_"


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return services.sqlite_url(tmp_path)
    if request.param == "postgres":
        return services.postgres_url()
    return services.mysql_url()


@pytest.fixture
def make(db_url: str) -> Iterator[object]:
    """A factory of transports on ``db_url`` sharing one fresh table prefix."""
    prefix = _prefix()
    opened: list[SQLTransport] = []

    def make(**options: object) -> SQLTransport:
        t = create_transport(db_url, table_prefix=prefix, visibility_timeout=1.0, **options)
        assert isinstance(t, SQLTransport)
        opened.append(t)
        return t

    yield make
    if opened:
        opened[0].drop_schema()
    for t in opened:
        t.close()


# -- query plans -------------------------------------------------------------------


def _fill(t: SQLTransport, queue: str, count: int) -> None:
    for start in range(0, count, 500):
        t.publish([_msg(queue, priority=i % 10) for i in range(start, min(count, start + 500))])
    # Delayed and leased rows too: the claim must skip them through the index.
    t.publish([_msg(queue, delay=3600) for _ in range(200)])


def _plan(t: SQLTransport, sql: str, params: tuple[object, ...]) -> str:
    prefix = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN "}.get(t.dialect, "EXPLAIN ")
    with t.engine.connect() as conn:
        if t.dialect == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {t.tables.messages.name}")
        rows = conn.exec_driver_sql(prefix + sql, params).all()
    return "\n".join(" | ".join(str(v) for v in row) for row in rows)


def test_claim_query_reads_the_claim_index_in_order(make: object) -> None:
    t = make()  # type: ignore[operator]
    queue = "plan"
    _fill(t, queue, 3000)
    assert t.receive([queue], 5, 0)  # some rows leased as well
    claim = t._sql("claim")
    if t.dialect in ("sqlite", "postgresql"):
        # The sub-select that picks the rows (the UPDATE around it is by primary key).
        pick = claim[claim.index("SELECT") : claim.rindex(")")]
        params: tuple[object, ...] = (queue, 10)
    else:
        pick = claim
        params = (queue, 10)
    plan = _plan(t, pick, params)
    index = f"{t.prefix}messages_claim"
    assert index in plan, f"the claim does not use {index}:\n{plan}"
    if t.dialect == "sqlite":
        assert "TEMP B-TREE" not in plan, f"the claim sorts its rows:\n{plan}"
    elif t.dialect == "postgresql":
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
    else:
        assert "filesort" not in plan.lower(), plan


def test_promotion_and_idle_probe_use_the_due_index(make: object) -> None:
    t = make()  # type: ignore[operator]
    _fill(t, "due", 2000)
    index = f"{t.prefix}messages_due"
    promote = _plan(t, t._sql("promote", 1), ("due", time.time()))
    assert index in promote, promote
    probe = _plan(t, t._sql("next_due", 1), ("due",) * t._probes)
    if t.dialect == "sqlite":
        assert "SCAN" not in probe.replace("SCAN CONSTANT ROW", ""), probe
    elif t.dialect == "postgresql":
        assert "Seq Scan" not in probe, probe


def _analyze(t: SQLTransport) -> None:
    """Give the planner statistics, as autovacuum (PostgreSQL), persistent statistics
    (InnoDB) or an application's ``ANALYZE`` (SQLite) would in production."""
    table = t.tables.messages.name
    with t.engine.begin() as conn:
        if t.dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql(f"ANALYZE TABLE {table}").all()
        else:
            conn.exec_driver_sql(f"ANALYZE {table}")


def _big_backlog(t: SQLTransport, queue: str) -> None:
    """128,000 ready messages, 200 delayed, a drained head (claimed and acked: dead
    tuples on PostgreSQL) and a few leases held, then statistics."""
    t.publish([_msg(queue, priority=i % 3) for i in range(1000)])
    table = t.tables.messages.name
    cols = ", ".join(c.name for c in t.tables.messages.columns if c.name != "id")
    with t.engine.begin() as conn:
        for _ in range(7):  # doubling: 1,000 -> 128,000 rows in seven statements
            conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}")
    t.publish([_msg(queue, delay=3600) for _ in range(200)])
    for _ in range(20):
        t.ack(t.receive([queue], 100, 0))
    assert len(t.receive([queue], 20, 0)) == 20
    _analyze(t)


def test_plans_with_statistics_on_a_big_backlog(make: object) -> None:
    # The case that regressed: once PostgreSQL had statistics of a big backlog, its
    # promotion read the claim index (or the due index with "state IN (1, 2)" as a
    # filter), i.e. every leased row and every dead entry left since the last VACUUM.
    t = make()  # type: ignore[operator]
    queue = "big"
    _big_backlog(t, queue)
    claim, due = f"{t.prefix}messages_claim", f"{t.prefix}messages_due"
    if t.dialect in ("sqlite", "postgresql"):
        plan = _plan(t, t._sql("claim"), (time.time() + 60, queue, 10))
    else:
        plan = _plan(t, t._sql("claim"), (queue, 10))
    assert claim in plan, plan
    probe = _plan(t, t._sql("next_due", 1), (queue,) * t._probes)
    promote = _plan(t, t._sql("promote", 1), (queue, time.time()))
    assert due in promote, promote
    if t.dialect == "sqlite":
        assert "TEMP B-TREE" not in plan, plan
        assert "SCAN" not in probe.replace("SCAN CONSTANT ROW", ""), probe
        assert claim in probe and due in probe, probe
        assert claim not in promote, promote
    elif t.dialect == "postgresql":
        for p in (plan, probe, promote):
            assert "Sort" not in p and "Seq Scan" not in p, p
        assert claim in probe and due in probe, probe
        assert claim not in promote, promote
        # visible_at bounds the due index's range, and no state test is left as a
        # filter over the entries (dead ones included) of the whole queue. (The index
        # predicate itself is rechecked on the locked rows: "Filter: (state <> 0)".)
        assert re.search(r"Index Cond: .*visible_at <=", promote), promote
        assert not re.search(r"Filter: .*(ANY|visible_at|= [12])", promote), promote
    else:  # EXPLAIN rows: id | select_type | table | type | possible_keys | key | ...
        assert "filesort" not in plan.lower(), plan
        assert plan.split(" | ")[5] == claim and " | ALL | " not in plan, plan
        assert promote.split(" | ")[5] == due, promote


def _version(t: SQLTransport) -> str:
    meta = t.tables.meta
    with t.engine.connect() as conn:
        found = conn.execute(
            sa.select(meta.c.value).where(meta.c.name == "transport_schema_version")
        ).scalar_one()
    return str(found)


def _index_sql(t: SQLTransport, index: str) -> str:
    name = f"{t.prefix}messages_{index}"
    with t.engine.connect() as conn:
        if t.dialect == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE name = ?"
        elif t.dialect == "postgresql":
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = %s"
        else:
            return ""
        return str(conn.exec_driver_sql(query, (name,)).scalar_one())


def test_schema_1_is_upgraded_to_2(make: object) -> None:
    old = make()  # type: ignore[operator]
    old.create_schema()
    table, prefix = old.tables.messages.name, f"{old.prefix}messages"
    # Put the database back in the state polyq with schema 1 left it.
    with old.engine.begin() as conn:
        if old.dialect in ("sqlite", "postgresql"):
            for index, columns in (
                ("claim", "queue, state, priority DESC, id"),
                ("due", "queue, state, visible_at"),
            ):
                conn.exec_driver_sql(f"DROP INDEX {prefix}_{index}")
                conn.exec_driver_sql(f"CREATE INDEX {prefix}_{index} ON {table} ({columns})")
        conn.execute(sa.update(old.tables.meta).values(value="1"))
    old.publish([_msg("up", message_id="before"), _msg("up", message_id="later", delay=0.2)])
    assert "WHERE" not in _index_sql(old, "due").upper()

    new = make()  # type: ignore[operator]
    assert new.size("up") == 2  # first use: ensure_schema upgrades
    assert _version(new) == "2"
    if new.dialect in ("sqlite", "postgresql"):
        assert "WHERE" in _index_sql(new, "claim").upper(), _index_sql(new, "claim")
        assert "= 0" in _index_sql(new, "claim"), _index_sql(new, "claim")
        assert "<> 0" in _index_sql(new, "due"), _index_sql(new, "due")
    got = new.receive(["up"], 10, 3)
    got += new.receive(["up"], 10, 3) if len(got) < 2 else []
    assert sorted(d.message_id for d in got) == ["before", "later"]
    new.ack(got)
    new.create_schema()  # idempotent on schema 2
    assert _version(new) == "2"


# -- several processes on one SQLite file -------------------------------------------


def _consume(url: str, prefix: str, queue: str, out: object, produced: object) -> None:
    t = create_transport(url, table_prefix=prefix, visibility_timeout=30)
    t.size(queue)
    out.put("ready")  # type: ignore[attr-defined]
    seen: list[str] = []
    while True:
        got = t.receive([queue], 7, 0.2)
        if got:
            seen.extend(d.message_id for d in got)
            time.sleep(0.005)  # "work", so that every worker gets a share
            t.ack(got)
        elif produced.is_set():  # type: ignore[attr-defined]
            break
    t.close()
    out.put(seen)  # type: ignore[attr-defined]


def _produce(url: str, prefix: str, queue: str, count: int) -> None:
    t = create_transport(url, table_prefix=prefix)
    for i in range(0, count, 10):
        t.publish([_msg(queue, message_id=f"{os.getpid()}-{i + j}") for j in range(10)])
    t.close()


@pytest.mark.sqlite
def test_three_worker_processes_share_one_file_without_double_delivery(tmp_path: Path) -> None:
    url, prefix, queue = services.sqlite_url(tmp_path), _prefix(), "shared"
    create_transport(url, table_prefix=prefix).close()  # tables first (not required)
    ctx = multiprocessing.get_context("fork")
    out, produced = ctx.Queue(), ctx.Event()
    producers = [ctx.Process(target=_produce, args=(url, prefix, queue, 300)) for _ in range(2)]
    consumers = [
        ctx.Process(target=_consume, args=(url, prefix, queue, out, produced)) for _ in range(3)
    ]
    for p in consumers:
        p.start()
    try:
        assert [out.get(timeout=60) for _ in consumers] == ["ready"] * 3
        for p in producers:
            p.start()
        for p in producers:
            p.join(60)
        produced.set()
        results = [out.get(timeout=60) for _ in consumers]
    finally:
        for p in producers + consumers:
            if p.pid is None:
                continue
            p.join(10)
            if p.is_alive():
                p.kill()
    counts = Counter(m for seen in results for m in seen)
    assert len(counts) == 600, f"{600 - len(counts)} messages never delivered"
    assert max(counts.values()) == 1, "a message was delivered twice"
    assert all(seen for seen in results), "a worker process got nothing: claims are not shared"


# -- fork safety ----------------------------------------------------------------------


@pytest.mark.sqlite
def test_instance_survives_fork(tmp_path: Path) -> None:
    t = create_transport(services.sqlite_url(tmp_path))
    t.publish([_msg("fork"), _msg("fork")])
    assert len(t.receive(["fork"], 1, 0)) == 1  # the pool now holds a connection
    pid = os.fork()
    if pid == 0:  # child: the inherited instance must open its own connections
        code = 1
        try:
            got = t.receive(["fork"], 1, 0)
            t.ack(got)
            code = 0 if len(got) == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.size("fork") == 1  # the parent's connections still work
    t.close()


# -- table prefixes, URLs, schema versions --------------------------------------------


@pytest.mark.sqlite
def test_table_prefixes_are_independent(tmp_path: Path) -> None:
    url = services.sqlite_url(tmp_path)
    a = create_transport(url, table_prefix="app_a_")
    b = create_transport(f"{url}?table_prefix=app_b_")
    a.publish([_msg("q")])
    assert a.size("q") == 1
    assert b.size("q") == 0
    names = sa.inspect(a.engine).get_table_names()  # type: ignore[attr-defined]
    assert "app_a_messages" in names and "app_b_messages" in names
    a.close()
    b.close()


@pytest.mark.sqlite
@pytest.mark.parametrize("bad", ["1abc", "a-b", "x" * 40, "drop table;"])
def test_bad_prefix_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError, match="table_prefix"):
        create_transport(services.sqlite_url(tmp_path), table_prefix=bad)


# URL translation only: no server, but one case per database.
@pytest.mark.sqlite
@pytest.mark.postgres
@pytest.mark.mysql
def test_urls_get_explicit_drivers_and_lose_polyq_options() -> None:
    url = engine_url("postgresql://u:pw@h/db?table_prefix=x_&visibility_timeout=5&sslmode=require")
    assert url.drivername == "postgresql+psycopg"
    assert dict(url.query) == {"sslmode": "require"}
    assert engine_url("mysql://root@h/db").drivername == "mysql+pymysql"
    assert engine_url("mariadb://root@h/db").drivername == "mariadb+pymysql"
    assert engine_url("postgres://h/db").drivername == "postgresql+psycopg"
    with pytest.raises(ConfigurationError, match="in-memory"):
        engine_url("sqlite://")


@pytest.mark.postgres  # a closed port: the driver, no server
def test_errors_name_the_database_without_its_password() -> None:
    t = create_transport("postgresql://polyq:s3cret-pw@127.0.0.1:1/nodb?connect_timeout=2")
    with pytest.raises(BrokerError) as info:
        t.publish([_msg("q")])
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    t.close()


@pytest.mark.sqlite
def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = services.sqlite_url(tmp_path)
    t = create_transport(url)
    t.create_schema()  # type: ignore[attr-defined]
    meta = t.tables.meta  # type: ignore[attr-defined]
    with t.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.update(meta).values(value="99"))
    with pytest.raises(ConfigurationError, match="newer"):
        create_transport(url).size("q")
    t.close()


# -- leases ---------------------------------------------------------------------------


def test_late_ack_of_a_lost_lease_does_not_remove_the_redelivery(make: object) -> None:
    t = make()  # type: ignore[operator]
    t.publish([_msg("lease")])
    first = t.receive(["lease"], 1, 0)
    time.sleep(1.1)
    second = t.receive(["lease"], 1, 2)
    assert second and second[0].delivery_count == 2
    t.ack(first)  # the first holder finished late: a no-op
    t.extend_lease(first)
    t.nack(first[0])
    assert t.size("lease") == 1
    assert t.receive(["lease"], 1, 0) == [], "the stale nack released the new lease"
    t.ack(second)
    assert t.size("lease") == 0


def test_extend_lease_takes_back_an_ended_unclaimed_lease(make: object) -> None:
    t = make()  # type: ignore[operator]
    t.publish([_msg("lease")])
    held = t.receive(["lease"], 1, 0)
    time.sleep(1.1)  # lease ended, nobody claimed it yet
    t.extend_lease(held)
    assert t.receive(["lease"], 1, 0.3) == []
    t.ack(held)
    assert t.size("lease") == 0


def test_extend_lease_and_ack_take_a_batch(make: object) -> None:
    t = make()  # type: ignore[operator]
    t.publish([_msg("batch") for _ in range(30)])
    held = t.receive(["batch"], 30, 0)
    assert len(held) == 30
    time.sleep(0.6)
    t.extend_lease(held)
    time.sleep(0.6)  # past the first lease, within the extended one
    assert t.receive(["batch"], 30, 0) == []
    t.ack(held)
    assert t.size("batch") == 0


# -- transactional enqueue ----------------------------------------------------------


def test_publish_joins_the_callers_transaction(make: object, db_url: str) -> None:
    t = make()  # type: ignore[operator]
    other = make()  # type: ignore[operator]
    t.create_schema()
    app_engine = sa.create_engine(engine_url(db_url))
    try:
        with app_engine.connect() as conn:
            conn.begin()
            t.publish([_msg("tx")], connection=conn)
            assert other.size("tx") == 0, "visible before the caller's commit"
            conn.rollback()
        assert other.size("tx") == 0, "published although the caller rolled back"
        with Session(app_engine) as session, session.begin():
            t.publish([_msg("tx", headers={"via": "session"})], connection=session)
        got = other.receive(["tx"], 10, 2)
        assert [d.headers for d in got] == [{"via": "session"}]
        other.ack(got)
    finally:
        app_engine.dispose()


@pytest.mark.sqlite
def test_publish_refuses_a_foreign_connection(tmp_path: Path) -> None:
    t = create_transport(services.sqlite_url(tmp_path))
    with pytest.raises(ConfigurationError, match="Connection or Session"):
        t.publish([_msg("q")], connection=object())
    t.close()


# -- idle cost --------------------------------------------------------------------------


@pytest.mark.sqlite
def test_idle_receive_polls_gently(tmp_path: Path) -> None:
    t = create_transport(services.sqlite_url(tmp_path))
    assert isinstance(t, SQLTransport)
    calls = Counter[str]()
    for name in ("_claim", "_next_due"):
        original = getattr(t, name)

        def counted(*args: object, _name: str = name, _original: object = original) -> object:
            calls[_name] += 1
            return _original(*args)  # type: ignore[operator]

        setattr(t, name, counted)
    start = time.monotonic()
    # Long enough that the first quick polls (1, 2, 4... ms) weigh little against
    # the steady 100 ms pauses the bound is about.
    assert t.receive(["idle"], 10, 5.0) == []
    elapsed = time.monotonic() - start
    per_second = (calls["_claim"] + calls["_next_due"]) / elapsed
    assert calls["_claim"] == 1, "an idle receive took the write lock more than once"
    assert per_second <= 12, f"an idle consumer made {per_second:.1f} queries/s"
    t.close()


# -- crash durability -------------------------------------------------------------------


def _publish_then_die(url: str, queue: str) -> None:
    t = create_transport(url)
    t.publish([_msg(queue) for _ in range(50)])
    os.kill(os.getpid(), signal.SIGKILL)


def _receive_then_die(url: str, queue: str) -> None:
    t = create_transport(url, visibility_timeout=1.0)
    assert len(t.receive([queue], 50, 5)) == 50
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.sqlite
def test_killed_processes_lose_nothing(tmp_path: Path) -> None:
    url, queue = services.sqlite_url(tmp_path), "crash"
    ctx = multiprocessing.get_context("fork")
    for target in (_publish_then_die, _receive_then_die):
        p = ctx.Process(target=target, args=(url, queue))
        p.start()
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
    t = create_transport(url, visibility_timeout=5)
    assert t.size(queue) == 50  # published, then leased by the killed worker
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < 50 and time.monotonic() < deadline:
        got += t.receive([queue], 50, 1)
    assert len(got) == 50, "messages held by a killed worker did not come back"
    assert {d.delivery_count for d in got} == {2}
    t.ack(got)
    t.close()


# -- LISTEN/NOTIFY (PostgreSQL) ----------------------------------------------------------


@pytest.mark.postgres
def test_receive_is_woken_by_notify_on_postgres() -> None:
    url, prefix = services.postgres_url(), _prefix()
    # A 5 s poll: only NOTIFY can wake the consumer quickly.
    consumer = create_transport(url, table_prefix=prefix, max_poll_interval=5)
    producer = create_transport(url, table_prefix=prefix)
    assert isinstance(consumer, SQLTransport)
    try:
        consumer.size("wake")  # tables first
        latencies = []
        for _ in range(5):
            published: list[float] = []

            def publish(published: list[float] = published) -> None:
                producer.publish([_msg("wake")])
                published.append(time.monotonic())

            timer = threading.Timer(0.2, publish)
            timer.start()
            got = consumer.receive(["wake"], 1, 4.0)
            woke = time.monotonic()
            timer.join()
            assert got, "nothing received within 4 s: NOTIFY did not wake the receiver"
            latencies.append(woke - published[0])
            consumer.ack(got)
        # The receiver polls only every 5 s: a wake-up well before that came from NOTIFY.
        assert max(latencies) < 2.0, f"receive woke {max(latencies):.3f}s after publish"
    finally:
        consumer.drop_schema()
        consumer.close()
        producer.close()


@pytest.mark.postgres
def test_broadcast_is_pushed_by_notify_on_postgres() -> None:
    url, prefix = services.postgres_url(), _prefix()
    sender = create_transport(url, table_prefix=prefix)
    listener = create_transport(url, table_prefix=prefix)
    try:
        sender.size("x")
        with listener.subscribe("control") as sub:
            assert sub.get(0.05) is None
            latencies = []
            for i in range(5):
                timer = threading.Timer(0.5, sender.broadcast, ["control", f"m{i}".encode()])
                timer.start()
                start = time.monotonic()
                assert sub.get(3.0) == f"m{i}".encode()
                latencies.append(time.monotonic() - start - 0.5)
                timer.join()
        # Polling would be ~55 ms late each time here; NOTIFY wakes within milliseconds.
        assert sorted(latencies)[2] < 0.03, f"broadcasts arrived {latencies} s late"
    finally:
        sender.drop_schema()
        sender.close()
        listener.close()


@pytest.mark.mysql
def test_servers_without_skip_locked_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    t = create_transport(services.mysql_url(), table_prefix=_prefix())
    assert isinstance(t, SQLTransport)
    try:
        t.size("q")
        t.schema.check_server()  # the real server is recent enough
        dialect = t.engine.dialect
        old = (10, 5, 9) if getattr(dialect, "is_mariadb", False) else (5, 7, 40)
        monkeypatch.setattr(dialect, "server_version_info", old)
        with pytest.raises(ConfigurationError, match="SKIP LOCKED"):
            t.schema.check_server()
    finally:
        monkeypatch.undo()
        t.drop_schema()
        t.close()


@pytest.mark.sqlite
def test_relative_sqlite_path_is_fixed_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    t = create_transport("sqlite:///polyq.sqlite3")
    assert f"sqlite:///{tmp_path / 'polyq.sqlite3'}" in t.describe()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # e.g. a daemon changing directory
    t.publish([_msg("q")])
    assert create_transport(services.sqlite_url(tmp_path)).size("q") == 1
    assert not (tmp_path / "elsewhere" / "polyq.sqlite3").exists()
    t.close()


def test_large_batches_and_many_due_messages(make: object) -> None:
    t = make()  # type: ignore[operator]
    t.publish([_msg("big") for _ in range(3000)])
    t.publish([_msg("big", delay=0.2) for _ in range(1500)])
    held = t.receive(["big"], 3000, 0)
    assert len(held) == 3000
    t.extend_lease(held)  # 9000 parameters in one statement would be too many
    t.ack(held)
    time.sleep(0.3)  # 1500 fall due at once: promoted 1000 per claim
    got: list = []
    while len(got) < 1500:
        batch = t.receive(["big"], 700, 1)
        assert batch
        got += batch
        t.ack(batch)
    assert t.size("big") == 0


@pytest.mark.sqlite
def test_sqlite_runs_in_wal_mode_and_writes_begin_immediate(tmp_path: Path) -> None:
    t = create_transport(services.sqlite_url(tmp_path), busy_timeout=7)
    assert isinstance(t, SQLTransport)
    t.size("q")
    statements: list[str] = []
    conn = t.db._thread_connection("test")  # the connection this thread's calls use
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
    conn.set_trace_callback(statements.append)
    t.publish([_msg("q")])
    t.ack(t.receive(["q"], 1, 0))
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins and all(s == "BEGIN IMMEDIATE" for s in begins), statements
    t.close()
