"""Redis-specific behaviour of ``polyq_backends.redis`` against the shared Redis,
isolated by a unique namespace per test."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from polyq.exceptions import BrokerError
from polyq.registry import create_backend
from polyq.testing import services
from polyq_backends.redis import RedisResultBackend


@pytest.fixture
def url() -> str:
    return urlsplit(services.redis_url())._replace(path="/1").geturl()


@pytest.fixture
def make(url: str) -> Iterator:
    made: list[RedisResultBackend] = []

    def factory(**options) -> RedisResultBackend:
        options.setdefault("namespace", "t" + uuid.uuid4().hex[:10])
        backend = create_backend(options.pop("url", url), **options)
        assert isinstance(backend, RedisResultBackend)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        names = list(backend._client.scan_iter(match=f"{backend.namespace}:*", count=1000))
        if names:
            backend._client.delete(*names)
        backend.close()
        backend.close()


def test_values_expire_and_are_never_read_late(make) -> None:
    b = make()
    b.set("a", b"1", ttl=0.15)
    b.set("keep", b"2")
    assert b.get("a") == b"1"
    time.sleep(0.2)
    assert b.get("a") is None and b.get("keep") == b"2"
    b.set("gone", b"x", ttl=0)
    assert b.get("gone") is None
    assert b.get_many(["a", "keep", "missing"]) == {"keep": b"2"}


def test_chord_counter_counts_distinct_members_under_concurrency(make) -> None:
    b = make()
    first: list[int] = []
    second: list[int] = []

    def add(i: int) -> None:
        # every member twice, as a redelivered header task would
        first.append(b.add_to_set("chord", f"m{i}", ttl=60))
        second.append(b.add_to_set("chord", f"m{i}", ttl=60))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # each first add grew the set by exactly one, atomically; no second add grew it
    assert sorted(first) == list(range(1, 21))
    assert max(second) == 20 and b.add_to_set("chord", "m0") == 20
    assert 0 < b._client.pttl(b._sets + "chord") <= 60_000


def test_set_if_absent_has_one_winner(make) -> None:
    b = make()
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        wins.append(b.set_if_absent("lock", str(i).encode(), ttl=5))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wins.count(True) == 1
    assert b.get("lock") is not None


def test_delete_forgets_values_and_sets(make) -> None:
    b = make()
    b.set("k", b"v")
    b.add_to_set("k", "m")
    b.add_to_set("s", "m")
    assert b.keys("") == ["k", "s"]
    b.delete(["k", "missing"])
    assert b.get("k") is None and b.keys("") == ["s"]
    b.set("glob*[x]", b"v")
    b.set("globber", b"v")
    assert b.keys("glob*[") == ["glob*[x]"]


def test_wait_is_woken_by_set(make) -> None:
    b = make()
    writer = make(namespace=b.namespace)
    timer = threading.Timer(0.2, lambda: writer.set("r", b"done"))
    timer.start()
    start = time.monotonic()
    assert b.wait("r", 5) == b"done"
    assert time.monotonic() - start < 1.0
    assert b.wait("r", 5) == b"done"  # already there
    start = time.monotonic()
    assert b.wait("never", 0.3) is None
    assert 0.29 <= time.monotonic() - start < 1.2
    timer.join()


def test_wait_latency_and_many_waiters(make) -> None:
    b = make()
    writer = make(namespace=b.namespace)
    results: dict[str, bytes | None] = {}

    def waiter(key: str) -> None:
        results[key] = b.wait(key, 5)

    threads = [threading.Thread(target=waiter, args=(f"k{i % 10}",)) for i in range(30)]
    for th in threads:
        th.start()
    time.sleep(0.1)
    writer.set_many([(f"k{i}", b"v%d" % i) for i in range(10)])
    for th in threads:
        th.join(5)
    assert results == {f"k{i}": b"v%d" % i for i in range(10)}
    latencies = []
    for i in range(50):
        timer = threading.Timer(0.001, writer.set, args=(f"lat{i}", b"x"))
        start = time.perf_counter()
        timer.start()
        assert b.wait(f"lat{i}", 2) == b"x"
        latencies.append(time.perf_counter() - start)
    assert statistics.median(latencies) < 0.05


def test_waits_do_not_cross_databases(make, url: str) -> None:
    b = make()
    other = make(namespace=b.namespace, url=urlsplit(url)._replace(path="/2").geturl())
    timer = threading.Timer(0.1, lambda: other.set("x", b"elsewhere"))
    timer.start()
    assert b.wait("x", 0.4) is None
    timer.join()
    other.delete(["x"])


def test_down_store_is_a_clear_error() -> None:
    b = RedisResultBackend("redis://:pw9@127.0.0.1:1/1", retries=0, socket_connect_timeout=0.5)
    with pytest.raises(BrokerError) as info:
        b.set("k", b"v")
    assert "pw9" not in str(info.value)
    with pytest.raises(BrokerError):
        b.wait("k", 0.1)
    b.close()
