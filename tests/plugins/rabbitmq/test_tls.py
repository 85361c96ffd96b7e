"""AMQP URLs into pika parameters: passwords typed as is, ``amqps://`` verification
and its warning (issue 17). Unit tests: nothing connects."""

from __future__ import annotations

import logging
import ssl
import uuid

import pytest

from polyq_transports.rabbitmq.connection import parameters, split_urls

LOGGER = "polyq.transports.rabbitmq"


def _params(url: str, **options: object) -> object:
    return parameters(url, options, heartbeat=30, connect_timeout=5, confirm_timeout=5)


def _host() -> str:
    return f"mq-{uuid.uuid4().hex[:8]}.example.com"


@pytest.mark.parametrize("password", ["s3@ret", "s3cret#x", "s3cret/x", "s3cret?x", "p@s/w#r?d;"])
def test_a_password_typed_as_is_reaches_pika_whole(password: str) -> None:
    params = _params(f"amqp://app:{password}@mq.example.com:5673/jobs?heartbeat=10")
    assert params.credentials.password == password  # type: ignore[attr-defined]
    assert (params.host, params.port, params.virtual_host) == ("mq.example.com", 5673, "jobs")  # type: ignore[attr-defined]


def test_failover_lists_split_only_before_another_url() -> None:
    assert split_urls("amqp://u:p;w@n1//;amqp://u:p;w@n2//") == [
        "amqp://u:p;w@n1//",
        "amqp://u:p;w@n2//",
    ]


def test_amqps_verifies_the_certificate_and_host_name_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = _host()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        params = _params(f"amqps://app:pw@{host}:5671//")
    context = params.ssl_options.context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert params.ssl_options.server_hostname == host  # type: ignore[attr-defined]
    assert caplog.records == []


def test_amqps_without_verification_is_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    url = f"amqps://app:s3cret@{_host()}:5671//?ssl_verify=false"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _params(url, ssl_verify=False)
        _params(url, ssl_verify=False)
    (record,) = caplog.records
    assert "ssl_verify=false" in record.getMessage() and "ssl_ca_certs" in record.getMessage()
    assert "s3cret" not in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _params("amqps://guest:guest@127.0.0.1:5671//", ssl_verify=False)  # loopback
    assert caplog.records == []
