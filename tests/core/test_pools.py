"""Every pool runs tasks (sync and ``async def``) and refuses what it cannot do."""

from __future__ import annotations

import asyncio
import threading

import pytest

from polyq import Polyq, states
from polyq.exceptions import ConfigurationError
from polyq.testing.worker import start_worker


@pytest.fixture
def app() -> Polyq:
    name = f"pools-{threading.get_ident()}-{id(object())}"
    return Polyq("pools", broker_url=f"memory://{name}", result_backend=f"memory://{name}")


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_pool_runs_sync_and_async_tasks(app: Polyq, pool: str) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def slow_double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    @app.task
    def fails() -> None:
        raise ValueError("nope")

    with start_worker(app, pool=pool, concurrency=4):
        assert add.delay(2, 3).get(timeout=10) == 5
        results = [slow_double.delay(i) for i in range(20)]
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(20)]
        failed = fails.delay()
        with pytest.raises(ValueError, match="nope"):
            failed.get(timeout=10)
        assert failed.state == states.FAILURE


def test_asyncio_pool_runs_coroutines_concurrently(app: Polyq) -> None:
    @app.task
    async def nap(i: int) -> int:
        await asyncio.sleep(0.5)
        return i

    with start_worker(app, pool="asyncio", concurrency=10):
        import time

        started = time.monotonic()
        assert [r.get(timeout=10) for r in [nap.delay(i) for i in range(10)]] == list(range(10))
        assert time.monotonic() - started < 3.0, "ten 0.5 s naps should overlap"


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_pool_refuses_a_hard_time_limit_it_cannot_enforce(app: Polyq, pool: str) -> None:
    @app.task(time_limit=1)
    def limited() -> None:
        pass

    with pytest.raises(ConfigurationError, match="prefork"):
        app.Worker(pool=pool, install_signal_handlers=False)


def test_threads_pool_refuses_a_soft_time_limit(app: Polyq) -> None:
    app.conf.task_soft_time_limit = 1
    with pytest.raises(ConfigurationError, match="soft time limit"):
        app.Worker(pool="threads", install_signal_handlers=False)


def test_unknown_pool_is_named(app: Polyq) -> None:
    with pytest.raises(ConfigurationError, match="unknown pool 'gevent'"):
        app.Worker(pool="gevent", install_signal_handlers=False)


def test_solo_pool_cannot_grow(app: Polyq) -> None:
    worker = app.Worker(pool="solo", install_signal_handlers=False)
    with pytest.raises(NotImplementedError, match="one task at a time"):
        worker.pool.grow(1)


def test_asyncio_pool_terminates_a_coroutine_and_only_it(app: Polyq) -> None:
    import time

    started: dict[int, threading.Event] = {i: threading.Event() for i in range(2)}
    cleaned: list[int] = []

    @app.task
    async def long_nap(i: int) -> int:
        started[i].set()
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(i)  # cancellation runs the coroutine's finally blocks
        return i

    @app.task
    async def short_nap(i: int) -> int:
        await asyncio.sleep(1.0)
        return i

    with start_worker(app, pool="asyncio", concurrency=4):
        doomed, other = long_nap.delay(0), short_nap.delay(7)
        assert started[0].wait(10)
        begun = time.monotonic()
        doomed.revoke(terminate=True)
        with pytest.raises(Exception, match="revoked"):
            doomed.get(timeout=10)
        assert time.monotonic() - begun < 5, "the coroutine was not cancelled"
        assert doomed.state == states.REVOKED
        assert cleaned == [0]
        assert other.get(timeout=10) == 7  # the others run on
        again = long_nap.delay(1)  # the pool goes on taking work
        assert started[1].wait(10)
        again.revoke(terminate=True)
        with pytest.raises(Exception, match="revoked"):
            again.get(timeout=10)
        assert cleaned == [0, 1]
