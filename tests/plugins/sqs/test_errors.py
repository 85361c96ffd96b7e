"""The SQS plugin's errors: refused credentials are final (:class:`BrokerRefused`,
not retried), and an endpoint nobody answers on is reported within about
``broker_connection_timeout`` (10 s before: botocore's four attempts)."""

from __future__ import annotations

import socket
import time

import botocore.exceptions
import pytest

from polyq import Polyq
from polyq.exceptions import BrokerError, BrokerRefused
from polyq_clients import aws

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("code", ["InvalidClientTokenId", "SignatureDoesNotMatch", "AccessDenied"])
def test_refused_credentials_are_final(code: str) -> None:
    exc = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "no"}}, "SendMessage")
    error = aws.refused("SQS", "sqs://", "SendMessage", exc)
    assert isinstance(error, BrokerRefused)
    assert "credentials" in str(error)


def test_other_refusals_are_not_final() -> None:
    exc = botocore.exceptions.ClientError(
        {"Error": {"Code": "ServiceUnavailable", "Message": "later"}}, "SendMessage"
    )
    error = aws.refused("SQS", "sqs://", "SendMessage", exc)
    assert type(error) is BrokerError


def test_an_unreachable_endpoint_is_reported_within_the_connection_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"sqs://key:secret@localhost?region=us-east-1&endpoint_url=http://127.0.0.1:{port}"
    app = Polyq("sqs-errors", broker=url, backend="memory://")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerError, match="Could not connect"):
            app.send_task("t", (1,))
        took = time.monotonic() - started
    finally:
        app.close()
    # botocore's standard retries back off up to 1 s, then 2 s, between its attempts.
    assert took < 4.0 + 3.0, took
