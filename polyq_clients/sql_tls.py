"""TLS of SQL connections: what a PostgreSQL or MySQL URL asks for, and warnings.

PostgreSQL (libpq through psycopg) reads ``sslmode`` and ``sslrootcert`` from the URL
(or ``PGSSLMODE``) itself; polyq keeps libpq's default (``prefer``) so that a local
server without TLS keeps working, and warns once when a connection that leaves this
host does not verify the server: ``sslmode`` unset, ``allow``, ``prefer``, ``require``
or ``verify-ca``. Only ``verify-full`` checks both the certificate and the host name.

MySQL and MariaDB (PyMySQL): polyq turns the URL's ``ssl_*`` options into one
``ssl.SSLContext`` (PyMySQL's own reading of them depends on which spelling is used,
and query values are strings, so ``ssl_verify_identity=false`` would read as true):

- ``ssl_ca`` / ``ssl_capath`` (or ``ssl_verify_cert=true``: the system's CAs) verify the
  server's certificate, and its host name unless ``ssl_verify_identity=false`` or
  ``ssl_check_hostname=false``;
- ``ssl_cert`` / ``ssl_key`` (``ssl_key_password``) present a client certificate;
- TLS that verifies nothing (a client certificate alone, ``ssl_verify_cert=false``)
  or not the host name is warned about once, as for PostgreSQL.

No warning for loopback hosts and Unix sockets (:func:`polyq.url.is_loopback`): the
traffic never crosses a network. See docs/brokers.md (*TLS*).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import URL

from polyq.exceptions import ConfigurationError
from polyq.url import is_loopback, redact, warn_insecure

__all__ = ["check_postgres", "mysql_connect_args"]

logger = logging.getLogger("polyq_clients.sql")

_MYSQL_SSL = (
    "ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_key_password", "ssl_cipher",
    "ssl_check_hostname", "ssl_verify_cert", "ssl_verify_identity",
)  # fmt: skip
_VERIFY_FULL = (
    "Use sslmode=verify-full with sslrootcert=<CA file> (or sslrootcert=system for a "
    "public CA); sslmode=disable says plain text is intended."
)
_PG_PROBLEMS = {
    "": "sslmode is not set, so libpq's default 'prefer' applies: TLS only if the server "
    "offers it, plain text otherwise, and the server's certificate is never verified",
    "allow": "sslmode=allow tries plain text first and never verifies the server's certificate",
    "prefer": "sslmode=prefer falls back to plain text and never verifies the server's certificate",
    "require": "sslmode=require encrypts but does not check the server's host name (nor, "
    "without sslrootcert, its certificate): anyone on the network path can pose as the server",
    "verify-ca": "sslmode=verify-ca verifies the certificate but not the host name: any "
    "server with a certificate from that CA is accepted",
}


def _one(value: Any) -> str | None:
    """A query value: SQLAlchemy gives a tuple for a repeated key; the last wins."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[-1] if value else None
    return None if value is None else str(value)


def _hosts(target: URL) -> list[str]:
    """The hosts libpq will connect to: ``?host=`` (a list, or a socket directory),
    else the URL's host(s), else ``PGHOST``, else the default Unix socket."""
    raw = _one(target.query.get("host")) or target.host or os.environ.get("PGHOST") or ""
    hosts = []
    for part in raw.split(","):
        part = part.strip()
        if part.startswith("["):
            part = part[1:].partition("]")[0]
        elif part.count(":") == 1:
            part = part.partition(":")[0]
        hosts.append(part)
    return hosts


def check_postgres(target: URL, url: str) -> None:
    """Warn once if the PostgreSQL connection of ``target`` (written ``url``) leaves
    this host without ``sslmode=verify-full``. The URL is not changed: libpq's default
    stays, so a local server without TLS keeps working."""
    if all(is_loopback(host) for host in _hosts(target)):
        return
    mode = (_one(target.query.get("sslmode")) or os.environ.get("PGSSLMODE") or "").lower()
    problem = _PG_PROBLEMS.get(mode)
    if problem:
        warn_insecure(logger, url, problem, _VERIFY_FULL)


def _flag(options: dict[str, str], key: str, url: str) -> bool | None:
    raw = options.get(key)
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{key}={raw!r} in {redact(url)}: use true or false")


def mysql_connect_args(target: URL, url: str) -> tuple[URL, dict[str, Any]]:
    """``(target without its ssl_* options, connect_args)`` for a PyMySQL URL: the
    options become one ``ssl.SSLContext`` (see the module docstring); a URL without
    them is returned as is (no TLS). Warns once when the TLS it asks for does not
    verify the server's certificate or host name on a connection that leaves this host."""
    options = {k: v for k in _MYSQL_SSL if (v := _one(target.query.get(k))) is not None}
    if not options or target.get_driver_name() != "pymysql":
        return target, {}
    ca, capath = options.get("ssl_ca"), options.get("ssl_capath")
    identity = _flag(options, "ssl_verify_identity", url)
    verify = _flag(options, "ssl_verify_cert", url)
    if verify is None:
        verify = bool(ca or capath or identity)
    hostname = identity if identity is not None else _flag(options, "ssl_check_hostname", url)
    if hostname is None:
        hostname = verify
    if hostname and not verify:
        raise ConfigurationError(
            f"{redact(url)}: the host name cannot be checked without verifying the "
            "certificate; drop ssl_verify_cert=false or set ssl_verify_identity=false"
        )
    try:
        context = ssl.create_default_context(cafile=ca, capath=capath)
        if options.get("ssl_cert"):
            context.load_cert_chain(
                options["ssl_cert"], options.get("ssl_key"), options.get("ssl_key_password")
            )
        if options.get("ssl_cipher"):
            context.set_ciphers(options["ssl_cipher"])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot set up TLS for {redact(url)}: {exc}; check the ssl_ca, ssl_capath, "
            "ssl_cert, ssl_key and ssl_cipher options"
        ) from exc
    # As PyMySQL: the certificates MySQL generates for itself fail Python 3.13's strict
    # X.509 checks while being valid for TLS.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.check_hostname = hostname
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if not is_loopback(target.host):
        if not verify:
            warn_insecure(
                logger,
                url,
                "TLS without certificate verification (no ssl_ca, or ssl_verify_cert=false): "
                "anyone on the network path can pose as the server",
                "Set ssl_ca=<CA file> (or ssl_verify_cert=true for the system's CAs).",
            )
        elif not hostname:
            warn_insecure(
                logger,
                url,
                "TLS without host name checking (ssl_verify_identity or ssl_check_hostname "
                "false): any server with a certificate from that CA is accepted",
                "Remove ssl_verify_identity=false / ssl_check_hostname=false.",
            )
    return target.difference_update_query(options), {"ssl": context}
