"""End to end through worker processes on SQS with DynamoDB results (moto on
loopback, started in this test process; the workers are subprocesses reaching it
over HTTP): SQS's own paths, a FIFO and a standard queue and ETAs beyond the native
delay limit. The shared smoke and crash sets run on SQS in ``tests/conformance/e2e``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from polyq.testing import services
from polyq.testing.conformance.e2e import E2E_APP
from polyq.testing.e2e_tasks import app, read_records, record, retry_twice
from polyq.testing.worker import WorkerProcess
from polyq_transports.sqs import SQSTransport
from polyq_transports.sqs.queues import base_name

# The results go to DynamoDB (moto serves both).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.dynamodb]


class TestSQSQueuesEndToEnd:
    """A FIFO and a standard queue through one worker process, with the native delay
    lowered to 1 s (``max_native_delay``, an option production honours) so that ETAs
    beyond it take the hopping path for real."""

    visibility_timeout = 2.0

    @pytest.fixture(scope="class")
    def setup(self) -> Iterator[tuple[str, str, SQSTransport]]:
        url = f"{services.sqs_url()}&queue_name_prefix=e{uuid.uuid4().hex[:6]}-"
        backend = f"{services.dynamodb_url()}&table=pqe_{uuid.uuid4().hex[:8]}"
        options = {"visibility_timeout": self.visibility_timeout, "max_native_delay": 1}
        fifo, standard = "jobs.fifo", "jobs"
        env = {
            "POLYQ_BROKER_URL": url,
            "POLYQ_RESULT_BACKEND": backend,
            "POLYQ_BROKER_TRANSPORT_OPTIONS": json.dumps(options),
            "POLYQ_TASK_DEFAULT_QUEUE": standard,
        }
        app.conf.update(
            broker_url=url,
            result_backend=backend,
            broker_transport_options=options,
            task_default_queue=standard,
        )
        app.close()
        # One process, so the FIFO order is the order of execution.
        worker = WorkerProcess(E2E_APP, ["-Q", f"{fifo},{standard}", "-c", "1"], env=env)
        try:
            with worker:
                transport = app.transport
                assert isinstance(transport, SQSTransport)
                yield fifo, standard, transport
        finally:
            for queue in (fifo, standard):
                app.transport.purge(queue)
            app.close()

    def test_fifo_runs_in_order(self, setup: tuple[str, str, SQSTransport], tmp_path) -> None:
        fifo, _, _ = setup
        path = str(tmp_path / "runs.jsonl")
        results = [record.apply_async((path,), queue=fifo) for _ in range(12)]
        for result in results:
            result.get(timeout=30)
        assert [r["id"] for r in sorted(read_records(path), key=lambda r: r["start"])] == [
            r.id for r in results
        ]

    def test_fifo_retry_is_not_deduplicated(
        self, setup: tuple[str, str, SQSTransport], tmp_path
    ) -> None:
        fifo, _, _ = setup
        path = str(tmp_path / "runs.jsonl")
        assert retry_twice.apply_async((path,), queue=fifo).get(timeout=30) == 2
        assert [r["retries"] for r in read_records(path)] == [0, 1, 2]

    @pytest.mark.parametrize("which", ["standard", "fifo"])
    def test_eta_beyond_the_native_limit(
        self, setup: tuple[str, str, SQSTransport], tmp_path, which: str
    ) -> None:
        fifo, standard, transport = setup
        queue = fifo if which == "fifo" else standard
        path = str(tmp_path / "runs.jsonl")
        countdown = 4.0
        sent = time.time()
        result = record.apply_async((path,), countdown=countdown, queue=queue)
        # While it waits, no worker holds it: sample what SQS has in flight.
        sqs = transport._client
        urls = [
            # The queue and, for a FIFO queue, the standard queue its delays wait in.
            transport.sqs_queues.queue_url(q, create=False)
            for q in (queue, base_name(queue) + "-delay")
        ]
        urls = [u for u in urls if u]
        held_since: float | None = None
        longest_hold = 0.0
        while time.time() < sent + countdown - 0.3:
            in_flight = sum(
                int(
                    sqs.get_queue_attributes(
                        QueueUrl=u, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
                    )["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
                )
                for u in urls
            )
            now = time.monotonic()
            if in_flight:
                held_since = held_since or now
                longest_hold = max(longest_hold, now - held_since)
            else:
                held_since = None
            time.sleep(0.05)
        assert longest_hold < 0.5, f"a worker held the waiting task for {longest_hold:.2f}s"
        result.get(timeout=20)
        (run,) = read_records(path)
        assert run["start"] >= sent + countdown - 0.05, "ran before its ETA"
        assert run["start"] <= sent + countdown + 2.0, (
            f"ran {run['start'] - sent:.2f}s after sending"
        )
        assert run["delivery_count"] == 1
