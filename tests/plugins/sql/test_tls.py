"""SQL URLs into driver parameters: passwords typed as is, and TLS (issue 17).

Unit tests of the URL -> client-parameters functions (``engine_url``, ``build_engine``,
``polyq_clients.sql_tls``): no TLS server is needed, nothing connects.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from pathlib import Path

import pytest

from polyq.exceptions import ConfigurationError
from polyq_clients.sql import build_engine, engine_url

LOGGER = "polyq_clients.sql"


def _host() -> str:
    # Warnings are logged once per URL and process: a fresh host name per test.
    return f"db-{uuid.uuid4().hex[:8]}.example.com"


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGSSLMODE", "PGHOST"):
        monkeypatch.delenv(name, raising=False)


def _warnings(caplog: pytest.LogCaptureFixture, url: str) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        build_engine(url, {}).dispose()
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.mark.postgres
def test_a_password_with_unencoded_characters_is_read_whole() -> None:
    target = engine_url(
        "postgresql://app:s3@ret/pw#x?y@db.example.com:5432/jobs?sslmode=verify-full"
    )
    assert (target.username, target.password) == ("app", "s3@ret/pw#x?y")
    assert (target.host, target.port, target.database) == ("db.example.com", 5432, "jobs")
    assert dict(target.query) == {"sslmode": "verify-full"}
    target = engine_url("mysql://root:p@ss@127.0.0.1:3306/h4")
    assert (target.password, target.host, target.database) == ("p@ss", "127.0.0.1", "h4")


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["", "allow", "prefer", "require", "verify-ca"])
def test_postgres_warns_when_a_remote_server_is_not_verified(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    query = f"?sslmode={mode}" if mode else ""
    url = f"postgresql://app:s3cret-pw@{_host()}:5432/jobs{query}"
    (message,) = _warnings(caplog, url)
    assert "verify-full" in message and "sslrootcert" in message
    assert "s3cret-pw" not in message and ".example.com" in message
    assert (f"sslmode={mode}" if mode else "sslmode is not set") in message
    assert _warnings(caplog, url) == []  # once per process


@pytest.mark.postgres
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pw@{host}/jobs?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
        "postgresql://app:pw@{host}/jobs?sslmode=disable",  # plain text said explicitly
        "postgresql://postgres@127.0.0.1:5432/h4",  # loopback: the test servers, no TLS
        "postgresql://postgres@localhost/h4?sslmode=require",
        "postgresql://postgres@[::1]/h4?sslmode=prefer",
        "postgresql:///jobs?host=/var/run/postgresql",  # a Unix socket
    ],
)
def test_postgres_is_quiet_when_verified_local_or_plain_on_purpose(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert _warnings(caplog, url.format(host=_host())) == []


@pytest.mark.postgres
def test_postgres_reads_sslmode_from_the_environment_as_libpq_does(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert _warnings(caplog, f"postgresql://app@{_host()}/jobs") == []
    monkeypatch.setenv("PGSSLMODE", "require")
    assert "sslmode=require" in _warnings(caplog, f"postgresql://app@{_host()}/jobs")[0]


@pytest.mark.postgres
def test_postgres_default_sslmode_is_left_to_libpq() -> None:
    # Not silently changed: a local server without TLS must keep working.
    engine = build_engine("postgresql://postgres@127.0.0.1:5432/h4", {})
    _, params = engine.dialect.create_connect_args(engine.url)
    assert "sslmode" not in params
    engine.dispose()


def _mysql_tls(url: str) -> ssl.SSLContext:
    from polyq_clients.sql_tls import mysql_connect_args

    target, args = mysql_connect_args(engine_url(url), url)
    assert not any(key.startswith("ssl_") for key in target.query)  # not given twice
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    return context


@pytest.mark.mysql
def test_mysql_tls_options_become_one_verifying_context(tmp_path: Path) -> None:
    ca = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    context = _mysql_tls(f"mysql://app@{_host()}/jobs?ssl_ca={ca}")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    context = _mysql_tls(
        f"mysql://app@{_host()}/jobs?ssl_verify_cert=true&ssl_verify_identity=true"
    )
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # A query value is a string: "false" must read as false (PyMySQL would take it as true).
    context = _mysql_tls(f"mysql://app@{_host()}/jobs?ssl_ca={ca}&ssl_verify_identity=false")
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    context = _mysql_tls(f"mysql://app@{_host()}/jobs?ssl_verify_cert=false")
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    with pytest.raises(ConfigurationError, match="ssl_ca"):
        _mysql_tls(f"mysql://app@{_host()}/jobs?ssl_ca={tmp_path}/missing.pem")
    with pytest.raises(ConfigurationError, match="true or false"):
        _mysql_tls(f"mysql://app@{_host()}/jobs?ssl_verify_cert=maybe")


@pytest.mark.mysql
@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("ssl_cert=/c.pem&ssl_key=/k.pem", "without certificate verification"),
        ("ssl_verify_cert=false", "without certificate verification"),
        ("ssl_ca={ca}&ssl_verify_identity=false", "without host name checking"),
        ("ssl_ca={ca}&ssl_check_hostname=false", "without host name checking"),
    ],
)
def test_mysql_warns_when_tls_does_not_verify(
    query: str, problem: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    # No certificate files are needed for the warning: load_cert_chain is not reached.
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", lambda *a, **k: None)
    url = f"mysql://app:s3cret@{_host()}/jobs?{query.format(ca=ca)}"
    (message,) = _warnings(caplog, url)
    assert problem in message and "s3cret" not in message


@pytest.mark.mysql
def test_mysql_is_quiet_when_verified_or_local(caplog: pytest.LogCaptureFixture) -> None:
    ca = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    assert _warnings(caplog, f"mysql://app@{_host()}/jobs?ssl_ca={ca}") == []
    assert _warnings(caplog, "mysql://root@127.0.0.1:3306/h4?ssl_verify_cert=false") == []
    assert _warnings(caplog, f"mysql://app@{_host()}/jobs") == []  # no TLS asked for
