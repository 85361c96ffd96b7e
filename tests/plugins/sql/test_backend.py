"""SQL result-backend behaviour beyond the conformance suite: atomic sets and locks
across processes on one SQLite file, LISTEN/NOTIFY waits on PostgreSQL, cleanup of
expired sets, LIKE metacharacters in key prefixes, fork safety."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polyq.registry import create_backend
from polyq.testing import services
from polyq_backends.sql import SQLResultBackend


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLResultBackend]:
    if request.param == "sqlite":
        url = services.sqlite_url(tmp_path)
    elif request.param == "postgres":
        url = services.postgres_url()
    else:
        url = services.mysql_url()
    b = create_backend(url, table_prefix=f"pqb{uuid.uuid4().hex[:8]}_")
    assert isinstance(b, SQLResultBackend)
    yield b
    b.drop_schema()
    b.close()


def _add_members(url: str, key: str, worker: int, out: Any) -> None:
    b = create_backend(url)
    sizes = [b.add_to_set(key, f"w{worker}-{n}", ttl=60) for n in range(40)]
    won = b.set_if_absent(f"{key}:lock", f"w{worker}".encode(), ttl=60)
    b.close()
    out.put((sizes, won))


@pytest.mark.sqlite
def test_sets_and_locks_are_atomic_across_processes(tmp_path: Path) -> None:
    url = services.sqlite_url(tmp_path)
    create_backend(url).close()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    workers = [ctx.Process(target=_add_members, args=(url, "chord", i, out)) for i in range(3)]
    for p in workers:
        p.start()
    try:
        results = [out.get(timeout=60) for _ in workers]
    finally:
        for p in workers:
            p.join(10)
    sizes = sorted(size for sizes, _ in results for size in sizes)
    assert sizes == list(range(1, 121)), "a size was seen twice or skipped"
    assert sum(won for _, won in results) == 1, "not exactly one process took the lock"


def test_cleanup_removes_expired_values_and_sets(backend: SQLResultBackend) -> None:
    backend.set("old", b"v", ttl=0.05)
    backend.add_to_set("old-set", "a", ttl=0.05)
    backend.set("kept", b"v")
    backend.add_to_set("kept-set", "a")
    time.sleep(0.1)
    assert backend.cleanup() == 2
    assert backend.get("kept") == b"v"
    assert backend.add_to_set("kept-set", "b") == 2
    assert backend.add_to_set("old-set", "b") == 1
    assert backend.cleanup() == 0


@pytest.mark.slow
def test_bulk_reads_and_deletes_beyond_the_bind_parameter_limit(
    backend: SQLResultBackend,
) -> None:
    # A chord of 100,000 members reads every result at once: one IN (...) of 100,001
    # parameters is refused by PostgreSQL (65,535) and SQLite (32,766).
    keys = [f"pqbulk-{uuid.UUID(int=i)}" for i in range(100_000)]
    backend.set_many([(keys[0], b"first"), (keys[-1], b"last")])
    assert backend.get_many(keys) == {keys[0]: b"first", keys[-1]: b"last"}
    backend.delete(keys)
    assert backend.get_many(keys) == {}


def test_keys_prefix_is_not_a_pattern(backend: SQLResultBackend) -> None:
    backend.set("a%b_1", b"v")
    backend.set("axb_1", b"v")
    backend.set("a%bx1", b"v")
    assert backend.keys("a%b_") == ["a%b_1"]


def test_overlong_keys_are_refused(backend: SQLResultBackend) -> None:
    with pytest.raises(ValueError, match="longer than"):
        backend.set("k" * 300, b"v")


@pytest.mark.postgres
def test_wait_is_woken_by_notify_on_postgres() -> None:
    url = services.postgres_url()
    prefix = f"pqb{uuid.uuid4().hex[:8]}_"
    # A 5 s poll: only NOTIFY can wake the waiter quickly.
    waiter = create_backend(url, table_prefix=prefix, max_poll_interval=5)
    writer = create_backend(url, table_prefix=prefix)
    assert isinstance(waiter, SQLResultBackend)
    try:
        waiter.get("warm-up")  # tables created before timing
        latencies = []
        for i in range(5):
            key = f"result-{i}"
            set_at: list[float] = []

            def write(key: str = key, set_at: list[float] = set_at) -> None:
                set_at.append(time.monotonic())
                writer.set(key, b"done")

            timer = threading.Timer(0.2, write)
            timer.start()
            assert waiter.wait(key, 3.0) == b"done"
            latencies.append(time.monotonic() - set_at[0])
            timer.join()
        assert max(latencies) < 0.1, f"wait woke {max(latencies):.3f}s after set"
    finally:
        waiter.drop_schema()
        waiter.close()
        writer.close()


@pytest.mark.sqlite
def test_backend_survives_fork(tmp_path: Path) -> None:
    b = create_backend(services.sqlite_url(tmp_path))
    b.set("k", b"parent")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            b.set("k", b"child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b.get("k") == b"child"
    b.close()


@pytest.mark.postgres
def test_forked_child_listens_for_itself_while_a_parent_thread_waits() -> None:
    # A child forked while a parent thread waits (LISTEN active on the parent's
    # connection) must LISTEN on a connection of its own: with a 5 s poll, only a
    # NOTIFY reaching the child can end its 3 s wait with the value.
    url = services.postgres_url()
    prefix = f"pqb{uuid.uuid4().hex[:8]}_"
    b = create_backend(url, table_prefix=prefix, max_poll_interval=5)
    writer = create_backend(url, table_prefix=prefix)
    assert isinstance(b, SQLResultBackend)
    try:
        b.get("warm-up")  # tables created first
        parent_wait = threading.Thread(target=b.wait, args=("never-set", 2.0))
        parent_wait.start()
        time.sleep(0.2)  # the parent thread is LISTENing now
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if b.wait("for-child", 3.0) == b"done" else 2
            finally:
                os._exit(code)
        time.sleep(0.3)
        writer.set("for-child", b"done")
        _, status = os.waitpid(pid, 0)
        parent_wait.join()
        assert os.waitstatus_to_exitcode(status) == 0, "the child's wait missed the NOTIFY"
    finally:
        b.drop_schema()
        b.close()
        writer.close()
