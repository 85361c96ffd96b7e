"""Redis URLs into redis-py parameters: passwords typed as is, TLS options and their
warnings (issue 17), a failure stored redacted in a real Redis result backend, and a
private TLS redis-server proving that host names are checked by default."""

from __future__ import annotations

import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from polyq import Polyq
from polyq.exceptions import BrokerError, ConfigurationError
from polyq.result import meta_key
from polyq.testing import services
from polyq.testing.worker import start_worker
from polyq_clients import redis as redis_client
from polyq_transports.redis import RedisTransport

from .test_transport import _free_port, private_redis, tls_files  # noqa: F401 (fixtures)

LOGGER = "polyq_clients.redis"


def _host() -> str:
    # Warnings are logged once per URL and process: a fresh host name per test.
    return f"cache-{uuid.uuid4().hex[:8]}.example.com"


def _connect(url: str, **options: Any) -> dict[str, Any]:
    client, _ = redis_client.connect(url, options)  # redis-py connects lazily: no server
    kwargs = dict(client.connection_pool.connection_kwargs)
    client.close()
    return kwargs


@pytest.mark.parametrize(
    ("url", "password", "host", "port", "db"),
    [
        ("redis://:s3cret#tail@cache:6380/2", "s3cret#tail", "cache", 6380, 2),
        ("redis://:s3cret/tail@cache:6380/2", "s3cret/tail", "cache", 6380, 2),
        ("redis://:s3cret?tail@cache:6380/2", "s3cret?tail", "cache", 6380, 2),
        ("redis://:s3@retpw@cache:6380/2", "s3@retpw", "cache", 6380, 2),
        ("redis://default:p@s/w#r?d@cache/3?socket_timeout=4", "p@s/w#r?d", "cache", 6379, 3),
    ],
)
def test_passwords_typed_as_is_reach_redis_py_whole(
    url: str, password: str, host: str, port: int, db: int
) -> None:
    # Old code: "bad port 's3cret' in Redis URL ..." or the host taken from the password.
    kwargs = _connect(url)
    assert (kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == (
        password,
        host,
        port,
        db,
    )


def test_a_bad_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        _connect("redis://:s3cret@cache:port/0")
    assert "s3cret" not in str(info.value)


def test_sentinel_lists_split_only_before_another_url() -> None:
    client, db = redis_client.connect(
        "sentinel://:p;w@127.0.0.1:26379/4;sentinel://:p;w@127.0.0.1:26380/4",
        {"master_name": "m"},
    )
    sentinels = client.connection_pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert client.connection_pool.connection_kwargs["password"] == "p;w" and db == 4
    client.close()


def test_hostname_checking_off_is_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    url = f"rediss://:s3cret@{_host()}:6380/0?ssl_check_hostname=false"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kwargs = _connect(url)
        _connect(url)
    assert kwargs["ssl_check_hostname"] is False
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert "ssl_check_hostname=false" in message and "s3cret" not in message
    assert ".example.com" in message and "Remove ssl_check_hostname=false" in message


def test_verification_off_is_warned_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kwargs = _connect(f"rediss://{_host()}/0", ssl={"ssl_cert_reqs": "none"})
    assert kwargs["ssl_cert_reqs"] == "none"
    assert "ssl_cert_reqs=required" in caplog.text and "ssl_ca_certs" in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "rediss://{host}/0",  # verified, host name checked: redis-py's and polyq's default
        "rediss://{host}/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem",
        "rediss://{host}/0?ssl_cert_reqs=optional",  # client side, the same as required
        "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none",  # loopback: no network path
        "rediss://localhost:6380/0?ssl_check_hostname=false",
    ],
)
def test_no_warning_when_verified_or_local(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kwargs = _connect(url.format(host=_host()))
    assert [r for r in caplog.records if r.name == LOGGER] == []
    if "ssl_check_hostname" not in url and "none" not in url:
        assert kwargs["ssl_check_hostname"] is True


def test_a_failure_quoting_a_dsn_is_stored_redacted_in_redis() -> None:
    namespace = "sec" + uuid.uuid4().hex[:8]
    app = Polyq(
        "secrets",
        broker=f"memory://{namespace}",
        backend=services.redis_url(),
        result_backend_transport_options={"namespace": namespace},
    )

    @app.task
    def connect() -> None:
        raise RuntimeError("no route to postgresql://app:s3cret-pw@db:5432/jobs password=dsn-pw")

    with start_worker(app, pool="solo"):
        res = connect.delay()
        error = res.get(timeout=20, propagate=False)
    raw = app.backend.get(meta_key(res.id)) or b""
    try:
        assert b"RuntimeError" in raw and b"db:5432/jobs" in raw
        for text in (raw.decode(), str(error), res.traceback or ""):
            assert "s3cret-pw" not in text and "dsn-pw" not in text
    finally:
        res.forget()


@pytest.mark.slow
def test_rediss_checks_the_host_name_by_default(
    private_redis,  # noqa: F811
    tls_files,  # noqa: F811
    tmp_path: Path,
) -> None:
    # A certificate from the trusted CA, for another host name than the one connected to.
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=elsewhere.example",
            "-keyout", "wrong.key", "-out", "wrong.csr")  # fmt: skip
    (tmp_path / "wrong.cnf").write_text("subjectAltName=DNS:elsewhere.example\n")
    openssl("x509", "-req", "-in", "wrong.csr", "-CA", tls_files["ca.crt"], "-CAkey",
            str(Path(tls_files["ca.crt"]).with_name("ca.key")), "-CAcreateserial", "-days", "1",
            "-extfile", "wrong.cnf", "-out", "wrong.crt")  # fmt: skip
    port = _free_port()
    private_redis("--tls-port", str(port), "--tls-cert-file", str(tmp_path / "wrong.crt"),
                  "--tls-key-file", str(tmp_path / "wrong.key"), "--tls-ca-cert-file",
                  tls_files["ca.crt"], "--tls-auth-clients", "no")  # fmt: skip
    base = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files['ca.crt']}"
    checked = RedisTransport(base, retries=0)
    with pytest.raises(BrokerError):
        checked.size("tls")
    checked.close()
    unchecked = RedisTransport(base + "&ssl_check_hostname=false", retries=0)
    assert unchecked.size("tls") == 0  # the CA still verifies the certificate
    unchecked.close()
