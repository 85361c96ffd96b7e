"""How long RabbitMQ takes to confirm, and to deliver, one persistent message.

The floor under any confirmed round trip: bare pika, no polyq. For each set of queue
arguments, a producer publishes ``--n`` persistent messages one at a time on a
confirm-mode channel (a ``BlockingConnection``, each publish waits for its confirm)
while a consumer in another process (prefetch 100, acks each message) records when
each one arrives; both read ``CLOCK_MONOTONIC``. One more run per round has no
consumer, for the confirm alone. Every queue is declared with a random name and
deleted afterwards::

    python bench/rabbitmq_confirm_latency.py --url amqp://guest:guest@127.0.0.1:5672/%2F
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
import uuid
from typing import Any

import pika

COMBOS: dict[str, dict[str, Any]] = {
    "classic v2, x-max-priority 9 (polyq's default)": {"x-queue-version": 2, "x-max-priority": 9},
    "classic v2": {"x-queue-version": 2},
    "classic v1, x-max-priority 9": {"x-queue-version": 1, "x-max-priority": 9},
    "classic v1": {"x-queue-version": 1},
    "classic v2, lazy": {"x-queue-version": 2, "x-queue-mode": "lazy"},
    "quorum": {"x-queue-type": "quorum"},
}


def _consume(url: str, queue: str, n: int, out: Any, ready: Any) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=100)
    arrivals: list[tuple[float, float]] = []

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        arrivals.append((json.loads(body)["t0"], time.monotonic()))
        ch.basic_ack(method.delivery_tag)
        if len(arrivals) >= n:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    ready.set()
    channel.start_consuming()
    out.put(arrivals)
    connection.close()


def measure(url: str, args: dict[str, Any], n: int, consumer: bool) -> tuple[float, float | None]:
    """(confirm p50, delivery p50 or None) in ms, the first 20 messages dropped."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    queue = f"bench-confirm-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, durable=True, arguments=args)
    out: Any = multiprocessing.Queue()
    ready = multiprocessing.Event()
    process = None
    if consumer:
        process = multiprocessing.Process(target=_consume, args=(url, queue, n, out, ready))
        process.start()
        ready.wait(30)
        time.sleep(0.3)
    # Headers like polyq's, so the broker parses what it would parse for polyq.
    props = pika.BasicProperties(
        delivery_mode=2,
        priority=0 if "x-max-priority" in args else None,
        headers={"polyq": "1", "task": "bench.echo", "id": str(uuid.uuid4())},
    )
    confirms = []
    for _ in range(n):
        t0 = time.monotonic()
        channel.basic_publish("", queue, json.dumps({"t0": t0}).encode(), props, mandatory=True)
        confirms.append(time.monotonic() - t0)
        time.sleep(0.002)
    delivered = None
    if process is not None:
        arrivals = out.get(timeout=60)
        process.join()
        delivered = statistics.median([t1 - t0 for t0, t1 in arrivals[20:]]) * 1000
    channel.queue_delete(queue)
    connection.close()
    return statistics.median(confirms[20:]) * 1000, delivered


def main() -> None:
    """Print each combination's confirm and delivery p50, ``--rounds`` times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    for _ in range(opts.rounds):
        for name, args in COMBOS.items():
            confirm, delivered = measure(opts.url, args, opts.n, consumer=True)
            print(f"{name:48s} confirm p50 {confirm:.2f} ms, delivered p50 {delivered:.2f} ms")
        confirm, _ = measure(opts.url, COMBOS[next(iter(COMBOS))], opts.n, consumer=False)
        print(f"{'the default, no consumer attached':48s} confirm p50 {confirm:.2f} ms")


if __name__ == "__main__":
    main()
