"""The result-backend conformance suite on Amazon DynamoDB, in a table of its own.

Against ``POLYQ_TEST_SQS_URL``'s endpoint when it is set (LocalStack, AWS). Otherwise
against a moto server on loopback started here, whose DynamoDB requests are served
one at a time: DynamoDB applies the writes to an item one after another (that is what
makes a conditional update atomic), but moto's threaded server does not, and loses
concurrent updates of one item, which the atomicity tests would report as the
plugin's fault. SQS requests are not serialised (long polls must overlap)."""

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from polyq.testing import services
from polyq.testing.conformance import BackendSuite


class _OneDynamoDBRequestAtATime:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            return self.app(environ, start_response)
        with self.lock:
            # Materialised under the lock: the response is built by then.
            return list(self.app(environ, start_response))


@pytest.fixture(scope="module")
def dynamodb_endpoint() -> Iterator[str]:
    if os.environ.get("POLYQ_TEST_SQS_URL"):
        yield services.dynamodb_url()
        return
    pytest.importorskip("moto")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(name, value)
    app = _OneDynamoDBRequestAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield "dynamodb://?" + urlencode(
            {"region": "us-east-1", "endpoint_url": f"http://{host}:{port}"}
        )
    finally:
        server.shutdown()
        thread.join(10)


class TestDynamoDBBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def backend_url(self, dynamodb_endpoint: str) -> str:
        return f"{dynamodb_endpoint}&table=pq_{uuid.uuid4().hex[:8]}"
