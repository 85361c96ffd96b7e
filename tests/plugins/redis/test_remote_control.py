"""A plain ``redis-cli PUBLISH`` on the control channel (issue 17): on the old code it
shut a worker down and resized its pool to -98; now the worker refuses what its
allow-list turns off and any argument out of range, and answers why.

The bodies are published with redis-py's ``PUBLISH`` on the channel polyq uses, as a
shell with access to Redis would, not through polyq.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from polyq import Polyq
from polyq.testing import services
from polyq.testing.worker import start_worker


@pytest.fixture
def app() -> Iterator[Polyq]:
    namespace = f"rc{uuid.uuid4().hex[:8]}"
    app = Polyq(
        "rc",
        broker_url=services.redis_url(),
        result_backend=f"memory://{namespace}",
        broker_transport_options={"namespace": namespace},
    )
    yield app
    app.close()


def publish(app: Polyq, command: str, **arguments: Any) -> Any:
    """``redis-cli PUBLISH <namespace>:<db>:broadcast:polyq.control '<json>'`` and the
    worker's reply."""
    conf = app.conf
    namespace = conf.broker_transport_options["namespace"]
    client = redis.Redis.from_url(conf.broker_url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    ticket = uuid.uuid4().hex
    reply_to = f"polyq.reply.{ticket}"
    body = {"command": command, "arguments": {**arguments, "reply_to": reply_to, "ticket": ticket}}
    try:
        with app.transport.subscribe(reply_to) as replies:
            client.publish(f"{namespace}:{db}:broadcast:polyq.control", json.dumps(body))
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                raw = replies.get(0.2)
                if raw is not None:
                    return json.loads(raw)["reply"]
    finally:
        client.close()
    return None


def test_redis_cli_publish_cannot_shut_down_or_break_the_worker(app: Polyq) -> None:
    app.conf.worker_remote_control_commands = ["ping", "stats", "pool_grow"]
    with start_worker(app, concurrency=2) as worker:
        refused = publish(app, "shutdown")
        assert "worker_remote_control_commands" in refused["error"]
        bad = publish(app, "pool_grow", n=-100)
        assert "n must be a whole number of pool slots" in bad["error"]
        time.sleep(0.5)  # the old code stopped 0.2 s after its reply
        assert not worker.stopping.is_set()
        assert worker.pool.concurrency == 2
        assert publish(app, "ping") == {"ok": "pong"}
