"""The transport conformance suite on Amazon SQS (moto's server on loopback, reached
by boto3 over HTTP, unless ``POLYQ_TEST_SQS_URL`` points elsewhere). Every test
uses its own uniquely named queues under a per-class prefix."""

import re
import socket
import uuid

import pytest

from polyq.testing import services
from polyq.testing.conformance import TransportSuite


class TestSQSTransport(TransportSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return f"{services.sqs_url()}&queue_name_prefix=pq{uuid.uuid4().hex[:6]}-"

    def unreachable_url(self, url: str) -> str | None:
        # The suite's generic rewrite drops the '//' of a URL with an empty host
        # (sqs://?...); swap the endpoint's port for a closed one directly.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return re.sub(r"endpoint_url=[^&]*", f"endpoint_url=http://127.0.0.1:{port}", url)

    def transport_options(self) -> dict:
        # Fail fast on the closed port instead of botocore's four attempts.
        return {**super().transport_options(), "max_attempts": 1, "connect_timeout": 2}
