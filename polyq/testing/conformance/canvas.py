"""Canvas conformance: chains, groups and chords through real worker processes.

Subclass with the ``transport_url`` and ``backend_url`` fixtures::

    class TestRedisCanvas(CanvasSuite):
        @pytest.fixture(scope="class")
        def transport_url(self) -> str:
            return services.redis_url()

        @pytest.fixture(scope="class")
        def backend_url(self) -> str:
            return services.redis_url()

Two worker processes (prefork, two children each) serve a class, so chord
members finish on different workers. ``CanvasSuite`` is the everyday set (also
the smoke set of every broker); ``CanvasStressSuite`` adds the 1,000-member
chord, the barrier chords repeated 20 times and the crash/redelivery cases.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from polyq import states
from polyq.canvas import (
    CHORD_FIRED_PREFIX,
    CHORD_MEMBERS_PREFIX,
    chain,
    chord,
    chunks,
    group,
    xmap,
    xstarmap,
)
from polyq.exceptions import ChordError
from polyq.execution import store_state
from polyq.message import TaskMessage
from polyq.result import GroupResult
from polyq.testing.canvas_tasks import (
    add,
    app,
    barrier,
    collect,
    crash_once,
    errback,
    fail,
    mul,
    read_log,
    tsum,
)
from polyq.testing.worker import WorkerProcess

__all__ = ["CanvasStressSuite", "CanvasSuite"]

CANVAS_APP = "polyq.testing.canvas_tasks"
TIMEOUT = 30.0


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class _CanvasBase:
    #: Visibility timeout (seconds) the workers and the test process use.
    visibility_timeout = 2.0
    #: Worker processes, and pool children in each.
    workers = 2
    concurrency = 2
    #: Extra worker command-line arguments.
    worker_args: tuple[str, ...] = ()

    @pytest.fixture(scope="class")
    def canvas_env(
        self, transport_url: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[dict[str, str]]:
        """Environment of the worker processes; the test process's app configured alike."""
        queue = f"canvas-{uuid.uuid4().hex[:10]}"
        executions = tmp_path_factory.mktemp("canvas-executions") / "executions.jsonl"
        env = {
            "POLYQ_CANVAS_EXECUTIONS": str(executions),
            "POLYQ_BROKER_URL": transport_url,
            "POLYQ_RESULT_BACKEND": backend_url,
            "POLYQ_BROKER_TRANSPORT_OPTIONS": json.dumps(
                {"visibility_timeout": self.visibility_timeout}
            ),
            "POLYQ_TASK_DEFAULT_QUEUE": queue,
        }
        app.conf.update(
            broker_url=transport_url,
            result_backend=backend_url,
            broker_transport_options={"visibility_timeout": self.visibility_timeout},
            task_default_queue=queue,
            task_always_eager=False,
        )
        app.close()
        try:
            yield env
        finally:
            try:
                app.transport.purge(queue)
            finally:
                app.close()

    @pytest.fixture(scope="class", autouse=True)
    def canvas_workers(self, canvas_env: dict[str, str]) -> Iterator[list[WorkerProcess]]:
        """The worker processes shared by the class."""
        queue = canvas_env["POLYQ_TASK_DEFAULT_QUEUE"]
        procs = []
        try:
            for index in range(self.workers):
                proc = WorkerProcess(
                    CANVAS_APP,
                    [
                        "-Q",
                        queue,
                        "-c",
                        str(self.concurrency),
                        "-n",
                        f"canvas{index}@%h",
                        "-l",
                        "INFO",
                        *self.worker_args,
                    ],
                    env=canvas_env,
                )
                procs.append(proc.start())
            yield procs
        finally:
            for proc in procs:
                proc.stop()

    @pytest.fixture
    def log(self, tmp_path: Any) -> str:
        """A file every task of the test appends its executions to."""
        return str(tmp_path / "executions.jsonl")


class CanvasSuite(_CanvasBase):
    """Every primitive once, end to end."""

    def test_chain(self, log: str) -> None:
        result = chain(add.s(2, 2, log=log) | mul.s(8, log=log))()
        assert result.get(timeout=TIMEOUT) == 32
        assert result.parent is not None
        assert result.parent.get(timeout=TIMEOUT) == 4
        assert len(read_log(log)) == 2

    def test_chain_partial_and_immutable(self, log: str) -> None:
        flow = add.s(1, 1) | add.si(10, 10) | mul.s(3)
        assert flow.apply_async().get(timeout=TIMEOUT) == 60
        assert (add.s(1) | mul.s(5)).apply_async((4,)).get(timeout=TIMEOUT) == 25

    def test_chain_failure_stops_and_marks_the_rest(self, log: str) -> None:
        result = chain(add.s(1, 1, log=log), fail.s(log=log), add.s(5, log=log))()
        started = time.monotonic()
        with pytest.raises(ValueError, match="canvas boom"):
            result.get(timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT
        assert result.state == states.FAILURE
        assert result.parent is not None
        assert result.parent.state == states.FAILURE
        time.sleep(0.3)
        assert [r["task"] for r in read_log(log)] == ["canvas.add", "canvas.fail"]

    def test_group(self, log: str) -> None:
        result = group(add.s(i, i, log=log) for i in range(10))()
        assert result.get(timeout=TIMEOUT) == [2 * i for i in range(10)]
        assert result.ready()
        assert result.successful()
        assert result.completed_count() == 10
        assert result.join(timeout=TIMEOUT) == [2 * i for i in range(10)]
        restored = GroupResult.restore(result.id, app=app)
        assert restored is not None
        assert [r.id for r in restored] == [r.id for r in result]
        assert restored.get(timeout=TIMEOUT) == [2 * i for i in range(10)]

    def test_chord(self, log: str) -> None:
        result = chord([add.s(i, i, log=log) for i in range(10)])(tsum.s(log=log))
        assert result.get(timeout=TIMEOUT) == 90
        assert isinstance(result.parent, GroupResult)
        time.sleep(0.3)
        assert collections.Counter(r["task"] for r in read_log(log)) == {
            "canvas.add": 10,
            "canvas.tsum": 1,
        }

    def test_chord_results_in_order(self) -> None:
        result = chord(add.s(i, 0) for i in range(25))(collect.s())
        assert result.get(timeout=TIMEOUT) == list(range(25))

    def test_chord_failure_ends_failed_and_calls_errback(self, log: str) -> None:
        body = tsum.s(log=log)
        body.link_error(errback.s(log=log))
        header = [add.s(1, 1, log=log), fail.s(log=log), add.s(2, 2, log=log)]
        result = chord(header, body)()
        started = time.monotonic()
        with pytest.raises(ChordError):
            result.get(timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT
        _wait_for(
            lambda: any(r["task"] == "canvas.errback" for r in read_log(log)), TIMEOUT, "errback"
        )
        time.sleep(0.5)
        tasks = collections.Counter(r["task"] for r in read_log(log))
        assert tasks["canvas.errback"] == 1
        assert tasks["canvas.tsum"] == 0

    def test_nesting(self) -> None:
        # a chain of groups: a group followed by a task becomes a chord
        assert chain(group(add.s(1, 1), add.s(2, 2)), tsum.s())().get(timeout=TIMEOUT) == 6
        # a group of chains
        res = group(add.s(1, 1) | mul.s(10), add.s(2, 2) | mul.s(10))()
        assert res.get(timeout=TIMEOUT) == [20, 40]
        # a chord inside a chain, with a chain as the chord's callback
        flow = add.s(1, 1) | chord([add.s(1), add.s(2)], tsum.s() | mul.s(10)) | add.s(1)
        assert flow().get(timeout=TIMEOUT) == 71
        # chains as chord header members
        res = chord([add.s(1, 1) | mul.s(2), add.s(2, 2) | mul.s(2)], tsum.s())()
        assert res.get(timeout=TIMEOUT) == 12

    def test_map_starmap_chunks(self) -> None:
        assert xmap(tsum.s(), [[1, 2], [3, 4]]).apply_async().get(timeout=TIMEOUT) == [3, 7]
        assert xstarmap(add.s(), [(1, 2), (3, 4)]).apply_async().get(timeout=TIMEOUT) == [3, 7]
        res = chunks(add.s(), [(i, i) for i in range(10)], 4)()
        assert res.get(timeout=TIMEOUT) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]

    def test_link_and_link_error(self, log: str) -> None:
        add.apply_async((1, 2), link=add.s(10, log=log))
        fail.apply_async((), link_error=errback.s(log=log))
        _wait_for(lambda: len(read_log(log)) >= 2, TIMEOUT, "link and link_error")
        tasks = sorted(r["task"] for r in read_log(log))
        assert tasks == ["canvas.add", "canvas.errback"]


class CanvasStressSuite(_CanvasBase):
    """The hard cases: size, simultaneous finishes, redelivery and crashes."""

    # No prefetching beyond the free slots: the barrier chords need every slot of
    # both workers at once, and a worker holding two barrier tasks it cannot run
    # yet would stall them.
    worker_args = ("--prefetch-multiplier", "1")
    #: Seconds the 1,000-member chord may take (raise it for slow emulators).
    big_chord_timeout = 120.0

    def test_chord_of_1000_fires_once_with_results_in_order(
        self, log: str, canvas_env: dict[str, str], canvas_workers: list[WorkerProcess]
    ) -> None:
        n = 1000
        executions = canvas_env["POLYQ_CANVAS_EXECUTIONS"]
        before = len(read_log(executions))
        result = chord(add.s(i, 0, log=log) for i in range(n))(collect.s(log=log))
        assert result.get(timeout=self.big_chord_timeout) == list(range(n))
        time.sleep(0.5)
        records = read_log(log)
        tasks = collections.Counter(r["task"] for r in records)
        assert tasks == {"canvas.add": n, "canvas.collect": 1}, tasks
        # Exactly n + 1 task executions in the workers, of any task: no unlock or
        # polling task ran.
        assert len(read_log(executions)) - before == n + 1
        # The header tasks ran in both worker processes.
        pids = {r["pid"] for r in records}
        for worker in canvas_workers:
            own = {worker.pid, *worker.children()}  # its pool's children, or itself (threads)
            assert pids & own, "a worker process ran no header task"

    def test_barrier_chords_fire_once_each(self, log: str, tmp_path: Any) -> None:
        size = self.workers * self.concurrency
        for round_ in range(20):
            directory = str(tmp_path / f"barrier-{round_}")
            header = [barrier.s(i, directory, size, log=log) for i in range(size)]
            result = chord(header)(tsum.s(log=log))
            assert result.get(timeout=TIMEOUT) == sum(range(size))
        time.sleep(0.5)
        tasks = collections.Counter(r["task"] for r in read_log(log))
        assert tasks == {"canvas.barrier": 20 * size, "canvas.tsum": 20}, tasks

    def test_redelivered_header_does_not_fire_twice(self, log: str) -> None:
        sig = chord([add.s(i, i, log=log) for i in range(3)], tsum.s(log=log))
        result = sig.apply_async()
        assert result.get(timeout=TIMEOUT) == 6
        header = result.parent
        assert isinstance(header, GroupResult)
        member = header.results[0]
        # Inject: the same header task delivered again after its result was stored
        # (e.g. its ack was lost), as a fresh copy of its message.
        self._redeliver(member.id, header.id, 3, log)
        _wait_for(lambda: len(read_log(log)) >= 5, TIMEOUT, "the redelivered header task")
        time.sleep(1.0)
        tasks = collections.Counter(r["task"] for r in read_log(log))
        assert tasks == {"canvas.add": 4, "canvas.tsum": 1}, tasks

    def test_worker_dying_before_publishing_the_callback(self, log: str) -> None:
        header = [add.s(1, 1, log=log), add.s(2, 2, log=log), add.s(3, 3, log=log)]
        header[2].set(countdown=600)  # held back: the test plays its worker
        result = chord(header, tsum.s(log=log)).apply_async()
        parent = result.parent
        assert isinstance(parent, GroupResult)
        group_id, last = parent.id, parent.results[2].id
        _wait_for(
            lambda: parent.results[0].ready() and parent.results[1].ready(),
            TIMEOUT,
            "the first two header tasks",
        )
        time.sleep(1.0)  # their workers count them just after storing their results
        # The last member's worker stored its result, counted it, and died before
        # publishing the callback: the chord is complete in the store, not fired.
        store_state(app, last, states.SUCCESS, 6)
        app.backend.add_to_set(CHORD_MEMBERS_PREFIX + group_id, last, app.result_ttl)
        time.sleep(0.5)
        assert not result.ready()
        # Its message was never acked, so it is delivered again: the chord fires.
        self._redeliver(last, group_id, 3, log, [3, 3])
        assert result.get(timeout=TIMEOUT) == 12
        # A crash after publishing but before marking it fired publishes a second
        # copy of the callback: it must not run.
        app.backend.delete([CHORD_FIRED_PREFIX + group_id])
        self._redeliver(last, group_id, 3, log, [3, 3])
        _wait_for(lambda: len(read_log(log)) >= 5, TIMEOUT, "the second redelivery")
        time.sleep(1.0)
        tasks = collections.Counter(r["task"] for r in read_log(log))
        assert tasks == {"canvas.add": 4, "canvas.tsum": 1}, tasks

    def test_process_killed_after_storing_a_header_result(self, log: str) -> None:
        if "--pool" in self.worker_args or "-P" in self.worker_args:
            pytest.skip("kills a pool child: needs the prefork pool")
        header = [add.s(1, 1, log=log), crash_once.s(5, log=log), add.s(2, 2, log=log)]
        result = chord(header)(tsum.s(log=log))
        assert result.get(timeout=TIMEOUT) == 11
        time.sleep(0.5)
        tasks = collections.Counter(r["task"] for r in read_log(log))
        assert tasks == {"canvas.add": 2, "canvas.crash_once": 2, "canvas.tsum": 1}, tasks

    def test_failing_header_ends_failed_not_hung(self, log: str) -> None:
        header = [add.s(i, i, log=log) for i in range(20)] + [fail.s(log=log)]
        result = chord(header)(tsum.s(log=log))
        started = time.monotonic()
        with pytest.raises(ChordError):
            result.get(timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT
        assert result.state == states.FAILURE

    def _redeliver(
        self, task_id: str, group_id: str, size: int, log: str, args: list[int] | None = None
    ) -> None:
        message = TaskMessage(
            task="canvas.add",
            id=task_id,
            args=args or [0, 0],
            kwargs={"log": log},
            options={"chord": {"id": group_id, "size": size}},
            queue=str(app.conf.task_default_queue),
        )
        app.publish(message)
