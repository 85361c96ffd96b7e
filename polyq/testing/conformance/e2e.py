"""End-to-end conformance: tasks through real worker processes on a broker pair.

Subclass with the ``transport_url`` and ``backend_url`` fixtures::

    class TestRedisEndToEnd(SmokeSuite):
        @pytest.fixture(scope="class")
        def transport_url(self) -> str:
            return services.redis_url()

        @pytest.fixture(scope="class")
        def backend_url(self) -> str:
            return services.redis_url()

``SmokeSuite`` shares one worker per class (calling, retries, failures, ETA,
time limits, dead letters, revokes). ``CrashSuite`` starts its own workers and
kills them (SIGKILL of the worker or of the child running a task, warm
shutdown, a task longer than the visibility timeout). ``RetryStormSuite`` runs
many tasks that retry at once on two workers and checks that every one ends in
its final state (a stale ``RETRY`` never hides it).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from polyq import states
from polyq.exceptions import TaskError, TimeLimitExceeded
from polyq.message import new_id
from polyq.testing.e2e_tasks import app, read_records, started
from polyq.testing.worker import WorkerProcess
from polyq.transport import OutgoingMessage, Transport

__all__ = ["CrashSuite", "RetryStormSuite", "SmokeSuite"]

E2E_APP = "polyq.testing.e2e_tasks"


class _Base:
    #: Visibility timeout (seconds) the workers and the test process use.
    visibility_timeout = 2.0

    @pytest.fixture(scope="class")
    def e2e_env(self, transport_url: str, backend_url: str) -> Iterator[dict[str, str]]:
        """Environment for worker processes, and the test process's app configured alike."""
        queue = f"e2e-{uuid.uuid4().hex[:10]}"
        env = {
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
        )
        app.close()
        try:
            yield env
        finally:
            try:
                # Purges on brokers whose queues are their messages; brokers with
                # queue objects (RabbitMQ, SQS) delete those too and keep none behind.
                app.transport.delete_queue(queue)
            finally:
                app.close()

    @pytest.fixture
    def records(self, tmp_path: Any) -> str:
        """A file the tasks append their executions to."""
        return str(tmp_path / "executions.jsonl")

    @property
    def queue(self) -> str:
        return str(app.conf.task_default_queue)

    @property
    def transport(self) -> Transport:
        return app.transport

    def worker(self, env: dict[str, str], *args: str) -> WorkerProcess:
        return WorkerProcess(E2E_APP, ["-Q", self.queue, "-l", "INFO", *args], env=env)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SmokeSuite(_Base):
    """Everyday behaviour through one shared worker process (prefork, -c 2)."""

    @pytest.fixture(scope="class", autouse=True)
    def shared_worker(self, e2e_env: dict[str, str]) -> Iterator[WorkerProcess]:
        with self.worker(e2e_env, "-c", "2") as w:
            yield w

    def test_round_trip(self) -> None:
        from polyq.testing.e2e_tasks import add

        assert add.delay(2, 2).get(timeout=20) == 4
        results = [add.delay(i, i) for i in range(20)]
        assert [r.get(timeout=20) for r in results] == [2 * i for i in range(20)]

    def test_retry_then_success(self, records: str) -> None:
        from polyq.testing.e2e_tasks import retry_twice

        result = retry_twice.delay(records)
        assert result.get(timeout=20) == 2
        attempts = read_records(records)
        assert [a["retries"] for a in attempts] == [0, 1, 2]
        assert {a["id"] for a in attempts} == {result.id}
        assert result.retries == 2

    def test_failure_is_reraised_with_traceback(self) -> None:
        from polyq.testing.e2e_tasks import always_fails

        result = always_fails.delay()
        with pytest.raises(KeyError):
            result.get(timeout=20)
        assert result.state == states.FAILURE
        assert result.traceback
        assert "KeyError" in result.traceback
        assert result.retries == 1  # autoretry_for retried once before giving up

    def test_countdown_waits_in_the_broker(self, records: str) -> None:
        from polyq.testing.e2e_tasks import record

        sent = time.time()
        result = record.apply_async((records,), countdown=1.5)
        time.sleep(0.5)
        if self.transport.capabilities.inspect_scheduled:
            waiting = [m.headers.get("id") for m in self.transport.scheduled(self.queue)]
            assert result.id in waiting, "a delayed task must wait in the broker, not a worker"
        result.get(timeout=20)
        (run,) = read_records(records)
        assert run["start"] >= sent + 1.5 - 0.05, "ran before its countdown"
        assert run["start"] <= sent + 1.5 + 2.0, "ran long after its countdown"

    def test_short_delay_is_not_blocked_by_a_long_one(self, records: str) -> None:
        from polyq.testing.e2e_tasks import record

        late = record.apply_async((records,), {"value": "late"}, countdown=3600)
        soon = record.apply_async((records,), {"value": "soon"}, countdown=0.5)
        assert soon.get(timeout=10) == "soon"
        assert late.state == states.PENDING
        late.revoke()

    def test_soft_time_limit(self) -> None:
        from polyq.testing.e2e_tasks import soft_limited

        assert soft_limited.delay().get(timeout=20) == "soft limit caught"

    def test_hard_time_limit_kills_and_fails(self) -> None:
        from polyq.testing.e2e_tasks import add, hard_limited

        result = hard_limited.delay()
        with pytest.raises((TimeLimitExceeded, TaskError)):
            result.get(timeout=20)
        assert result.state == states.FAILURE
        assert add.delay(1, 1).get(timeout=20) == 2, "the worker goes on after a kill"

    def test_progress_meta(self) -> None:
        from polyq.testing.e2e_tasks import progress

        result = progress.delay(3)
        assert result.get(timeout=20) == 3
        assert result.state == states.SUCCESS

    def test_revoked_task_does_not_run(self, records: str) -> None:
        from polyq.testing.e2e_tasks import record

        result = record.apply_async((records,), countdown=1.0)
        result.revoke()
        with pytest.raises(Exception, match="revoked"):
            result.get(timeout=20)
        assert result.state == states.REVOKED
        assert read_records(records) == []

    def test_expired_task_does_not_run(self, records: str) -> None:
        from polyq.testing.e2e_tasks import record

        result = record.apply_async((records,), countdown=1.0, expires=0.5)
        with pytest.raises(Exception, match="revoked"):
            result.get(timeout=20)
        assert read_records(records) == []

    def test_bad_messages_are_dead_lettered_and_the_worker_goes_on(self, tmp_path: Any) -> None:
        from polyq.testing.e2e_tasks import add

        marker = tmp_path / "pwned"

        class Exploit:
            def __reduce__(self) -> Any:
                return (open, (str(marker), "w"))

        def raw(body: bytes, headers: dict[str, str]) -> OutgoingMessage:
            return OutgoingMessage(self.queue, body, new_id(), headers)

        task_id = new_id()
        pickled = raw(
            pickle.dumps({"args": [Exploit()], "kwargs": {}}),
            {
                "polyq": "1",
                "task": add.name,
                "id": task_id,
                "content-type": "application/x-python-serialize",
            },
        )
        garbage = raw(b"\xff\x00 not a message", {"hello": "world"})
        unknown = raw(
            b'{"args":[],"kwargs":{}}',
            {
                "polyq": "1",
                "task": "no.such.task",
                "id": new_id(),
                "content-type": "application/json",
            },
        )
        self.transport.publish([pickled, garbage, unknown])
        assert add.delay(20, 22).get(timeout=20) == 42
        assert not marker.exists(), "a refused pickle must never be deserialized"
        if self.transport.capabilities.dead_letter:

            def dead() -> dict[str, str]:
                return {d.message_id: d.reason for d in self.transport.dead_letters(self.queue)}

            _wait_for(lambda: len(dead()) >= 3, 10, "three dead letters")
            reasons = dead()
            assert "accept_content" in reasons[pickled.message_id]
            assert "undecodable" in reasons[garbage.message_id]
            assert "unknown task" in reasons[unknown.message_id]
            assert self.transport.purge_dead_letters(self.queue) >= 3


class CrashSuite(_Base):
    """Workers killed, stopped and outlived: nothing lost, nothing run twice."""

    def _runs(self, records: str) -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for line in read_records(records):
            runs[line["id"]].append(line)
        return runs

    def test_worker_killed_mid_task_is_redelivered(
        self, e2e_env: dict[str, str], records: str
    ) -> None:
        from polyq.testing.e2e_tasks import record

        first = self.worker(e2e_env, "-c", "1", "--prefetch-multiplier", "4").start()
        try:
            long = record.delay(records, 2.0, "long")
            behind = [record.delay(records, 0.0, i) for i in range(3)]
            _wait_for(lambda: started(records, long.id), 20, "the long task to start")
            time.sleep(0.3)  # the others wait prefetched behind it
            killed_at = time.time()
            first.kill_all()
        finally:
            first.stop()
        with self.worker(e2e_env, "-c", "2"):
            assert long.get(timeout=30) == "long"
            assert [r.get(timeout=30) for r in behind] == [0, 1, 2]
        runs = self._runs(records)
        rerun = runs[long.id][-1]
        assert rerun["delivery_count"] == 2
        vt = self.visibility_timeout
        delay = rerun["start"] - killed_at
        print(f"re-run started {delay:.2f}s after the kill (visibility timeout {vt}s)")
        if self.transport.capabilities.lease == "timeout":
            # The lease was last extended at most vt/3 before the kill.
            assert vt * 2 / 3 - 0.3 <= delay <= 2 * vt + 1.0, delay
        else:
            assert delay <= 10.0, delay
        for r in behind:
            assert len(runs[r.id]) == 1, "a prefetched task must come back and run once"

    def test_child_killed_mid_task_is_redelivered_at_once(
        self, e2e_env: dict[str, str], records: str
    ) -> None:
        from polyq.testing.e2e_tasks import record

        with self.worker(e2e_env, "-c", "1") as w:
            result = record.delay(records, 1.5, "survived")
            _wait_for(lambda: started(records, result.id), 20, "the task to start")
            killed_at = time.time()
            for pid in w.children():
                os.kill(pid, signal.SIGKILL)
            assert result.get(timeout=30) == "survived"
        (run,) = self._runs(records)[result.id]
        assert run["delivery_count"] == 2
        assert run["start"] - killed_at < self.visibility_timeout, "redelivered at once"

    def test_long_task_runs_once_with_lease_extension(
        self, e2e_env: dict[str, str], records: str
    ) -> None:
        from polyq.testing.e2e_tasks import record

        if self.transport.capabilities.lease != "timeout":
            pytest.skip("connection-bound leases have no timeout to outlive")
        seconds = 3 * self.visibility_timeout
        with (
            self.worker(e2e_env, "-c", "1", "--prefetch-multiplier", "4"),
            self.worker(e2e_env, "-c", "1"),
        ):
            long = record.delay(records, seconds, "long")
            time.sleep(0.3)
            behind = [record.delay(records, 0.0, i) for i in range(3)]
            assert long.get(timeout=seconds + 20) == "long"
            for r in behind:
                r.get(timeout=20)
        runs = self._runs(records)
        assert len(runs[long.id]) == 1
        assert runs[long.id][0]["delivery_count"] == 1
        for r in behind:
            assert len(runs[r.id]) == 1

    def test_warm_shutdown_finishes_running_and_returns_prefetched(
        self, e2e_env: dict[str, str], records: str
    ) -> None:
        from polyq.testing.e2e_tasks import record

        w = self.worker(e2e_env, "-c", "1", "--prefetch-multiplier", "4").start()
        try:
            running = record.delay(records, 1.5, "finished")
            _wait_for(lambda: started(records, running.id), 20, "the task to start")
            behind = [record.delay(records, 0.0, i) for i in range(3)]
            time.sleep(0.5)
            w.signal(signal.SIGTERM)
            assert w.wait(timeout=20) == 0
            stopped_at = time.time()
        finally:
            w.stop()
        assert running.get(timeout=5) == "finished"
        with self.worker(e2e_env, "-c", "1"):
            for r in behind:
                r.get(timeout=20)
        runs = self._runs(records)
        assert len(runs[running.id]) == 1
        for r in behind:
            (run,) = runs[r.id]
            if self.transport.capabilities.lease == "timeout":
                assert run["start"] - stopped_at < self.visibility_timeout + 3.0


class RetryStormSuite(_Base):
    """Final states never go backwards, end to end: tasks retrying at once
    (``countdown=0``) on two prefork workers all end ``FAILURE`` when their retries
    run out, none left in ``RETRY`` by a late write of another execution."""

    #: How many retrying tasks are sent at once.
    tasks = 200
    #: Seconds the test waits for every task to reach a final state.
    timeout = 120.0

    def test_retrying_tasks_all_end_in_failure(self, e2e_env: dict[str, str]) -> None:
        from polyq.result import decode_record, meta_key
        from polyq.testing.e2e_tasks import retry_then_fail

        def found() -> collections.Counter[str]:
            data = app.backend.get_many(keys)
            records = [decode_record(data[k], app.result_accept) if k in data else {} for k in keys]
            return collections.Counter(r.get("status", states.PENDING) for r in records)

        with self.worker(e2e_env, "-c", "2"), self.worker(e2e_env, "-c", "2"):
            results = [retry_then_fail.delay() for _ in range(self.tasks)]
            keys = [meta_key(r.id) for r in results]
            deadline = time.monotonic() + self.timeout
            counts = found()
            while counts[states.FAILURE] < self.tasks and time.monotonic() < deadline:
                time.sleep(0.2)
                counts = found()
            time.sleep(1.0)  # room for any late write of a duplicate execution
            counts = found()
        assert counts == {states.FAILURE: self.tasks}, (
            f"not every retrying task ended FAILURE: {dict(counts)}"
        )
        for result in results[:5]:
            with pytest.raises(RuntimeError, match="attempt 2"):
                result.get(timeout=5)

    def test_a_late_retry_does_not_hide_the_failure(self, e2e_env: dict[str, str]) -> None:
        # The storm above loses this race only now and then (the old code: in 2
        # of 3 runs on a loaded machine); here each earlier attempt waits before
        # storing RETRY, so both RETRYs come after the FAILURE every time.
        from polyq.testing.e2e_tasks import retry_late_then_fail

        pause = 1.0
        with self.worker(e2e_env, "-c", "2") as one, self.worker(e2e_env, "-c", "2") as two:
            result = retry_late_then_fail.delay(pause)
            with pytest.raises(RuntimeError, match="attempt 2"):
                result.get(timeout=30)
            _wait_for(
                lambda: (one.output() + two.output()).count(f"[{result.id}] retry:") == 2,
                2 * pause + 10,
                "both earlier attempts to store RETRY (after the FAILURE)",
            )
            assert app.AsyncResult(result.id).state == states.FAILURE
