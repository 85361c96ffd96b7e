"""The transport suite: many producers and consumers at once (contract point 9)."""

from __future__ import annotations

import threading
from collections import Counter

from polyq.testing.conformance.transport.support import Connect, TransportSuiteBase, make_message
from polyq.transport import Transport

__all__ = ["ConcurrencyTests"]


class ConcurrencyTests(TransportSuiteBase):
    """Nothing lost, nothing held twice, under concurrent producers and consumers."""

    # -- concurrency (point 9) ---------------------------------------------------------

    def test_many_producers_and_consumers(self, connect: Connect, queue: str) -> None:
        producers, consumers = [connect(), connect()], [connect(), connect()]
        per_producer, total = 100, 400
        sent: list[str] = []
        received: Counter[str] = Counter()
        held: set[str] = set()
        overlaps: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        done = threading.Event()

        def produce(t: Transport) -> None:
            try:
                for _ in range(per_producer // 10):
                    batch = [make_message(queue) for _ in range(10)]
                    t.publish(batch)
                    with lock:
                        sent.extend(m.message_id for m in batch)
            except BaseException as exc:
                errors.append(exc)

        def consume(t: Transport) -> None:
            try:
                while not done.is_set():
                    batch = t.receive([queue], 10, 0.2)
                    with lock:
                        for d in batch:
                            if d.message_id in held:
                                overlaps.append(d.message_id)
                            held.add(d.message_id)
                            received[d.message_id] += 1
                    t.ack(batch)
                    with lock:
                        held.difference_update(d.message_id for d in batch)
                        # Distinct messages: a second copy (a broker that may duplicate,
                        # or a lease of 1.5 s outrun on a loaded machine) must not end
                        # the wait while another message is still on its way.
                        if len(received) >= total:
                            done.set()
            except BaseException as exc:
                errors.append(exc)
                done.set()

        threads = [threading.Thread(target=produce, args=(producers[i % 2],)) for i in range(4)]
        threads += [threading.Thread(target=consume, args=(consumers[i % 2],)) for i in range(4)]
        for thread in threads:
            thread.start()
        done.wait(60)
        done.set()
        for thread in threads:
            thread.join(10)
        assert not errors, f"a producer or consumer thread raised: {errors[0]!r}"
        assert len(sent) == total
        missing = set(sent) - set(received)
        assert not missing, f"{len(missing)} of {total} messages were never delivered"
        # A broker that declares may_duplicate (SQS standard queues) may hand out a
        # second copy at any time, even while the first is held; nothing else may.
        if not consumers[0].capabilities.may_duplicate:
            assert not overlaps, f"{len(overlaps)} messages were held by two consumers at once"
            twice = [m for m, n in received.items() if n > 1]
            assert not twice, f"{len(twice)} messages were delivered twice without any failure"
