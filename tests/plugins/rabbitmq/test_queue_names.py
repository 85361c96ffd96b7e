"""A RabbitMQ queue name with a control character (issue 17): publishing to
``"jobs\\nurgent"`` hung 28 s before failing; it is refused at once, when sending
and when a consumer declares the queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from polyq.exceptions import InvalidQueueName
from polyq.registry import create_transport
from polyq.testing import services
from polyq.transport import OutgoingMessage, Transport


@pytest.fixture
def transport() -> Iterator[Transport]:
    t = create_transport(services.amqp_url())
    yield t
    t.close()


@pytest.mark.parametrize("name", ["jobs\nurgent", "tab\tq", "nul\x00q"])
def test_a_control_character_is_refused_at_once(transport: Transport, name: str) -> None:
    message = OutgoingMessage(queue=name, body=b"x", message_id=str(uuid.uuid4()))
    started = time.monotonic()
    with pytest.raises(InvalidQueueName, match="a control character"):
        transport.publish([message])
    with pytest.raises(InvalidQueueName, match="a control character"):
        transport.receive([name], 1, 0.1)
    assert time.monotonic() - started < 2.0
    # The connection is still good for a proper name.
    queue = f"pqnames-{uuid.uuid4().hex[:10]}"
    try:
        transport.publish([OutgoingMessage(queue=queue, body=b"y", message_id="m1")])
        assert transport.size(queue) == 1
    finally:
        transport.delete_queue(queue)
