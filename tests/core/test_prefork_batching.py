"""The prefork pool queues only tiny tasks in busy children, never loses a result when
a child dies mid-batch, and the worker widens its prefetch window only for tiny tasks."""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polyq import Polyq
from polyq.message import peek
from polyq.testing.worker import start_worker
from polyq.worker.consumer import SHORT_TASK_PREFETCH
from polyq.worker.pools import BATCH_MAX, Job, PreforkPool, Result, base
from polyq.worker.pools.prefork import batching


@pytest.fixture(autouse=True)
def _roomy_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    # What counts as tiny is a matter of microseconds, which a loaded CI machine
    # cannot promise; the logic under test is the same with roomier thresholds.
    monkeypatch.setattr(base, "SHORT_TASK", 0.01)  # the worker's prefetch window
    monkeypatch.setattr(batching, "SHORT_TASK", 0.01)  # what may share a child
    monkeypatch.setattr(batching, "BATCH_BUDGET", 0.2)


@pytest.fixture
def app(tmp_path: Path) -> Polyq:
    name = f"batching-{threading.get_ident()}-{id(object())}"
    app = Polyq("batching", broker_url=f"memory://{name}", result_backend=f"memory://{name}")
    ran = tmp_path / "ran"

    @app.task(name="t.tiny", ignore_result=True)
    def tiny(i: int, die: bool = False) -> None:
        if die:
            os._exit(3)  # a crash in the middle of a batch
        with ran.open("a") as f:
            f.write(f"{i}\n")

    @app.task(name="t.nap", ignore_result=True)
    def nap() -> None:
        time.sleep(0.05)

    app.finalize()
    return app


def _jobs(app: Polyq, name: str, calls: list[tuple[object, ...]]) -> list[Job]:
    """Jobs made from real messages, as the worker makes them."""
    task = app.tasks[name]
    for args in calls:
        task.apply_async(args)
    deliveries = app.transport.receive([app.conf.task_default_queue], len(calls), 1.0)
    assert len(deliveries) == len(calls)
    base = time.monotonic_ns()
    return [Job.from_delivery(base + n, d, *peek(d)) for n, d in enumerate(deliveries)]


class _Harness:
    """A prefork pool driven as the worker drives it, with its reports collected."""

    def __init__(self, app: Polyq, concurrency: int) -> None:
        self.results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.pending: collections.deque[Job] = collections.deque()
        self.returned: list[Job] = []
        self.lock = threading.Lock()
        self.pool = PreforkPool(app, concurrency, "test@host", self._done)
        self.pool.on_return = self._return
        self.pool.on_capacity = self.dispatch

    def _done(self, results: list[Result]) -> None:
        for result in results:
            self.results.put(result)
        self.dispatch()

    def _return(self, jobs: list[Job]) -> None:
        self.returned.extend(jobs)
        with self.lock:
            self.pending.extendleft(reversed(jobs))

    def dispatch(self) -> list[Job]:
        with self.lock:
            taken = self.pool.take(self.pending)
            self.pool.start_jobs(taken)
        return taken

    def run(self, jobs: list[Job]) -> dict[str, Result]:
        with self.lock:
            self.pending.extend(jobs)
        self.dispatch()
        got = {}
        while len(got) < len(jobs):
            result = self.results.get(timeout=20)
            got[result.task_id] = result
        return got


@pytest.fixture
def harness(app: Polyq, request: pytest.FixtureRequest) -> Iterator[_Harness]:
    h = _Harness(app, request.param)
    h.pool.start()
    try:
        yield h
    finally:
        h.pool.stop(wait=False)


def _warm_up(h: _Harness, app: Polyq, name: str, n: int) -> None:
    # One at a time, so the pool learns how long the task runs.
    for job in _jobs(app, name, [(i,) if name == "t.tiny" else () for i in range(n)]):
        h.run([job])


@pytest.mark.parametrize("harness", [2], indirect=True)
def test_tiny_tasks_queue_in_busy_children_slow_and_unknown_ones_do_not(
    app: Polyq, harness: _Harness
) -> None:
    # Never seen: only the two idle children take one each.
    unknown = _jobs(app, "t.nap", [(), (), ()])
    with harness.lock:
        harness.pending.extend(unknown)
        taken = harness.pool.take(harness.pending)
        assert len(taken) == 2 and len(harness.pending) == 1
        harness.pool.start_jobs(taken)
    got: dict[str, Result] = {}
    while len(got) < 3:
        result = harness.results.get(timeout=20)
        got[result.task_id] = result
    assert {r.action for r in got.values()} == {"ack"}

    # Known slow (50 ms): still one per idle child, the rest wait in the worker.
    naps = _jobs(app, "t.nap", [(), (), (), ()])
    with harness.lock:
        harness.pending.extend(naps)
        taken = harness.pool.take(harness.pending)
        assert len(taken) == 2 and len(harness.pending) == 2
        harness.pool.start_jobs(taken)
    got = {}
    while len(got) < 4:
        result = harness.results.get(timeout=20)
        got[result.task_id] = result

    # Known tiny: once warm, busy children queue several, sent in one message each.
    _warm_up(harness, app, "t.tiny", 8)
    tiny = _jobs(app, "t.tiny", [(i,) for i in range(100, 140)])
    with harness.lock:
        harness.pending.extend(tiny)
        taken = harness.pool.take(harness.pending)
        sizes = [len(c.unsent) for c in harness.pool._children]
        harness.pool.start_jobs(taken)
    assert len(taken) > 2, f"tiny tasks were not batched: {sizes}"
    assert max(sizes) > 1 and max(sizes) <= BATCH_MAX
    assert abs(sizes[0] - sizes[1]) <= 1, f"uneven split between children: {sizes}"
    harness.dispatch()
    got = {}
    while len(got) < len(tiny):
        result = harness.results.get(timeout=20)
        got[result.task_id] = result
    assert {r.action for r in got.values()} == {"ack"}


@pytest.mark.parametrize("harness", [1], indirect=True)
def test_a_child_dying_mid_batch_loses_no_result_and_reruns_nothing(
    app: Polyq, harness: _Harness, tmp_path: Path
) -> None:
    _warm_up(harness, app, "t.tiny", 8)
    before = (tmp_path / "ran").read_text().split()
    jobs = _jobs(app, "t.tiny", [(1,), (2,), (3, True), (4,), (5,)])
    with harness.lock:
        harness.pending.extend(jobs)
        taken = harness.pool.take(harness.pending)
        assert len(taken) == 5, "the five tiny jobs should all go to the one child"
        harness.pool.start_jobs(taken)
    got: dict[str, Result] = {}
    while len(got) < 5:
        result = harness.results.get(timeout=30)
        got[result.task_id] = result
    actions = [got[job.task_id].action for job in jobs]
    assert actions == ["ack", "ack", "worker_lost", "ack", "ack"]
    # The two queued behind the crash were handed back, never started, and ran once.
    assert [j.task_id for j in harness.returned] == [jobs[3].task_id, jobs[4].task_id]
    ran = (tmp_path / "ran").read_text().split()[len(before) :]
    assert sorted(ran) == ["1", "2", "4", "5"]


def test_worker_widens_its_window_only_for_tiny_tasks(app: Polyq) -> None:
    tiny, nap = app.tasks["t.tiny"], app.tasks["t.nap"]
    with start_worker(app, pool="threads", concurrency=2) as worker:
        assert worker.window() == worker.prefetch_limit == 8
        for i in range(20):
            tiny.delay(i)
        deadline = time.monotonic() + 10
        while worker.processed < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.window() == 2 * SHORT_TASK_PREFETCH
        nap.delay()
        deadline = time.monotonic() + 10
        while worker.processed < 21 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.window() == 8, "one slow task must bring the window back"


def test_a_chosen_prefetch_multiplier_is_kept(app: Polyq) -> None:
    app.conf.worker_prefetch_multiplier = 4
    tiny = app.tasks["t.tiny"]
    with start_worker(app, pool="threads", concurrency=2) as worker:
        for i in range(20):
            tiny.delay(i)
        deadline = time.monotonic() + 10
        while worker.processed < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.processed == 20
        assert worker.window() == 8
