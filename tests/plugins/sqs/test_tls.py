"""SQS/DynamoDB URLs into boto3 parameters: Celery's ``sqs://KEY:SECRET@`` with a
secret typed as is, and the plain-HTTP endpoint warning (issue 17). Nothing connects."""

from __future__ import annotations

import logging
import uuid

import pytest

from polyq_clients import aws


def test_a_secret_key_typed_as_is_is_read_whole() -> None:
    # AWS secret keys hold "/" and "+"; urlsplit took "/" for the start of the path.
    args = aws.session_args("sqs://AKIAEXAMPLE:ab/cd+ef@gh@?region=eu-west-1", {})
    assert args["aws_access_key_id"] == "AKIAEXAMPLE"
    assert args["aws_secret_access_key"] == "ab/cd+ef@gh"


def test_a_plain_http_endpoint_off_this_host_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    remote = f"http://sqs-{uuid.uuid4().hex[:8]}.example.com:9324"
    with caplog.at_level(logging.WARNING, logger="polyq_clients.aws"):
        for endpoint in (remote, remote, "http://127.0.0.1:5000", "https://sqs.example.com"):
            aws.create_client(
                "sqs",
                "sqs://?region=eu-west-1",
                {"aws_access_key_id": "k", "aws_secret_access_key": "s"},
                region="eu-west-1",
                endpoint=endpoint,
                read_timeout=5,
                label="SQS",
            )
    (record,) = caplog.records
    assert "plain HTTP" in record.getMessage() and "https://" in record.getMessage()
