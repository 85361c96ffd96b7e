"""Count the SQS API calls polyq makes per 1,000 tasks (what AWS bills), batched and not.

Publishes 1,000 messages and consumes them as the worker does (receive, one lease
extension per held batch as if the tasks ran past a third of the visibility timeout,
ack), counting every call with botocore's ``before-call.sqs.*`` event hook: once with
polyq's batching (``SendMessageBatch``, receive batches of 10, ``DeleteMessageBatch``,
``ChangeMessageVisibilityBatch``) and once one message at a time, as a transport
without batching would. Runs against moto on loopback, or ``--url sqs://...``.

    python bench/sqs_calls.py [--url URL] [--tasks 1000]
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import time
import uuid
from typing import Any

from polyq.registry import create_transport
from polyq.transport import OutgoingMessage, Transport


def _moto_url() -> tuple[str, Any]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"sqs://?region=us-east-1&endpoint_url=http://{host}:{port}", server


def _counted(url: str) -> tuple[Transport, collections.Counter[str]]:
    transport = create_transport(
        url, queue_name_prefix=f"bench{uuid.uuid4().hex[:6]}-", visibility_timeout=30
    )
    calls: collections.Counter[str] = collections.Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    # The transport's own client: one hook sees every request it sends.
    transport._client.meta.events.register("before-call.sqs.*", count)  # type: ignore[attr-defined]
    return transport, calls


def run(url: str, tasks: int, batched: bool) -> collections.Counter[str]:
    transport, calls = _counted(url)
    queue = "bench"
    transport.purge(queue)  # creates the queue, so setup calls are not counted below
    calls.clear()
    messages = [
        OutgoingMessage(queue, b'{"args": [1, 2], "kwargs": {}}', str(uuid.uuid4()), {"task": "t"})
        for _ in range(tasks)
    ]
    if batched:
        transport.publish(messages)
    else:
        for message in messages:
            transport.publish([message])
    done = 0
    while done < tasks:
        got = transport.receive([queue], 10 if batched else 1, 1.0)
        if not got:
            continue
        if batched:
            transport.extend_lease(got)
            transport.ack(got)
        else:
            for delivery in got:
                transport.extend_lease([delivery])
                transport.ack([delivery])
        done += len(got)
    transport.close()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("POLYQ_TEST_SQS_URL"))
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    server = None
    url = args.url
    if not url:
        url, server = _moto_url()
    try:
        for batched in (True, False):
            start = time.perf_counter()
            calls = run(url, args.tasks, batched)
            elapsed = time.perf_counter() - start
            label = "batched  " if batched else "unbatched"
            per = {name: n * 1000 / args.tasks for name, n in sorted(calls.items())}
            total = sum(per.values())
            print(f"{label} {total:7.0f} calls per 1,000 tasks ({elapsed:.1f}s): ", end="")
            print(", ".join(f"{name} {n:.0f}" for name, n in per.items()))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
