"""Connecting to Redis, for the Redis transport and result backend alike.

:func:`connect` reads a ``redis://``, ``rediss://`` (TLS) or ``redis+sentinel://``
URL and its options into a redis-py client; :class:`translate_errors` turns
redis-py's errors into :class:`~polyq.exceptions.BrokerError` saying what failed
and how to fix it. The URL forms and options are described in ``docs/brokers.md``
and the reasons behind them in ``docs/design/redis.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from polyq.exceptions import BrokerError, BrokerRefused, ConfigurationError
from polyq.url import is_loopback, query_options, redact, url_list, warn_insecure
from polyq.url import split_url as parse_url

__all__ = ["connect", "split_url", "translate_errors"]

logger = logging.getLogger(__name__)

_SSL_KEYS = (
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname", "ssl_password",
)  # fmt: skip


def split_url(url: str) -> tuple[str, str | None, str | None, list[tuple[str, int]], int]:
    """``(scheme, username, password, [(host, port)...], db)`` of one Redis URL.

    Split by :func:`polyq.url.split_url` (a password may hold ``@``, ``/``, ``?`` or
    ``#`` as typed), which also reads a Sentinel host list. ``redis://secret@host``
    (no colon) is Celery's password-only spelling.
    """
    parts = parse_url(url)
    username, password = parts.username or None, parts.password
    if password is None and username:
        username, password = None, username
    default_port = 26379 if "sentinel" in parts.scheme.lower() else 6379
    hosts = [
        (host or "localhost", port or default_port) for host, port in parts.hosts if host or port
    ]
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ConfigurationError(
            f"bad database {path!r} in Redis URL {redact(url)!r}; the path must be a "
            "database number such as /0"
        ) from None
    return parts.scheme.lower(), username, password, hosts or [("localhost", default_port)], db


def _ssl_kwargs(
    options: Mapping[str, Any], url: str, hosts: list[tuple[str, int]]
) -> dict[str, Any]:
    """redis-py's TLS keyword arguments from the ``ssl_*`` options (or an ``ssl`` /
    ``broker_use_ssl`` dict); refuses unknown ones and warns (once) when the server's
    certificate or host name is not checked on a connection that leaves this host."""
    merged: dict[str, Any] = {}
    for nested in ("broker_use_ssl", "ssl"):
        if isinstance(options.get(nested), Mapping):
            merged.update(options[nested])
    merged.update({k: options[k] for k in _SSL_KEYS if k in options})
    unknown = set(merged) - set(_SSL_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown TLS option(s) {sorted(unknown)} for {redact(url)}; use {list(_SSL_KEYS)}"
        )
    reqs = str(merged.get("ssl_cert_reqs", "required")).lower().removeprefix("cert_")
    if reqs not in {"required", "optional", "none"}:
        raise ConfigurationError(
            f"ssl_cert_reqs={merged['ssl_cert_reqs']!r} for {redact(url)}: use required, "
            "optional or none"
        )
    merged["ssl_cert_reqs"] = reqs
    # redis-py checks the host name by default; only an explicit false turns it off.
    check_hostname = merged.get("ssl_check_hostname", True) not in (False, "false", 0, "0")
    merged["ssl_check_hostname"] = check_hostname and reqs != "none"
    remote = not all(is_loopback(host) for host, _ in hosts)
    # Client side, "optional" verifies like "required" (Python's ssl module): no warning.
    if remote and reqs == "none":
        warn_insecure(
            logger,
            url,
            "TLS without certificate verification (ssl_cert_reqs=none): anyone on the "
            "network path can read and alter messages",
            "Set ssl_cert_reqs=required and ssl_ca_certs=<CA file> (or rely on the system CAs).",
        )
    elif remote and not check_hostname:
        warn_insecure(
            logger,
            url,
            "TLS without host name checking (ssl_check_hostname=false): any certificate "
            "the CA signed, for any host, is accepted",
            "Remove ssl_check_hostname=false and connect by the name in the certificate.",
        )
    return {"ssl": True, **merged}


def connect(url: str, options: Mapping[str, Any]) -> tuple[redis.Redis, int]:
    """A redis-py client for ``url`` (plain, TLS or Sentinel) and its database number.

    Used by the transport and the result backend alike, so that one URL means the
    same to both. The socket timeout is set deliberately
    (default 10 s) rather than left at redis-py 8's 5 s; callers keep every
    blocking command well below it.
    """
    options = {**options, **query_options(url)}
    # Celery: sentinel://h1:26379;sentinel://h2:26379 (a ";" before another scheme only:
    # a password may hold one).
    first, *others = url_list(url) or [url]
    scheme, username, password, hosts, db = split_url(first)
    for extra in others:
        hosts += split_url(extra)[3]
    # TLS: the rediss scheme, or ssl=True / an ssl dict / Celery's broker_use_ssl dict
    tls = scheme.startswith("rediss") or any(
        options.get(key) is True or (isinstance(options.get(key), Mapping) and options[key])
        for key in ("ssl", "broker_use_ssl")
    )
    if "db" in options:
        db = int(options["db"])
    kwargs: dict[str, Any] = {
        "db": db,
        "username": options.get("username", username),
        "password": options.get("password", password),
        "socket_timeout": float(options.get("socket_timeout", 10.0)),
        # Celery's redis_socket_connect_timeout; else the app's broker_connection_timeout
        # (connect_timeout), so a down server is reported within it.
        "socket_connect_timeout": float(
            options.get("socket_connect_timeout", options.get("connect_timeout", 4.0))
        ),
        "socket_keepalive": bool(options.get("socket_keepalive", True)),
        "health_check_interval": int(options.get("health_check_interval", 25)),
        # A bounded retry: a down broker must surface as an error within seconds.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), int(options.get("retries", 2))),
        "decode_responses": False,
    }
    for key in ("max_connections", "client_name", "protocol"):
        if key in options:
            kwargs[key] = options[key]
    if tls:
        kwargs.update(_ssl_kwargs(options, url, hosts))
    if "sentinel" in scheme:
        master = options.get("master_name")
        if not master:
            raise ConfigurationError(
                f"the Sentinel URL {redact(url)} needs the master's name: add "
                "?master_name=<name> or broker_transport_options={'master_name': ...}"
            )
        sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
        sentinel_kwargs.setdefault("socket_timeout", kwargs["socket_timeout"])
        sentinel_kwargs.setdefault("socket_connect_timeout", kwargs["socket_connect_timeout"])
        # A dead sentinel must not be retried with backoff: the next one is asked.
        sentinel_kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)
        master_client: redis.Redis = sentinel.master_for(str(master), redis_class=redis.Redis)
        return master_client, db
    host, port = hosts[0]
    return redis.Redis(host=host, port=port, **kwargs), db


class translate_errors:
    """``with translate_errors(url, "publish 3 messages"):`` turns redis-py errors
    raised inside the block into :class:`BrokerError` saying what failed, where
    (credentials redacted) and how to fix it. Costs nothing when nothing fails:
    the URL is only redacted then."""

    __slots__ = ("url", "what")

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        # A socket error redis-py did not wrap (a pub/sub read) is a connection error too.
        if exc is None or not isinstance(exc, redis.RedisError | OSError):
            return
        where, what, detail = redact(self.url), self.what, redact(str(exc))
        if isinstance(exc, redis.AuthenticationError):
            raise BrokerRefused(
                f"Redis at {where} refused the credentials while trying to {what}: {detail}. "
                "Check the username and password in the URL."
            ) from exc
        if isinstance(exc, redis.exceptions.NoPermissionError):
            raise BrokerRefused(
                f"Redis at {where} refused to {what}: {detail}. The user's ACL does not "
                "allow it: grant the commands and keys polyq uses (docs/brokers.md)."
            ) from exc
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
            raise BrokerError(
                f"cannot reach Redis at {where} to {what}: {detail}. Is the server running "
                "and the URL's host, port and TLS setting right?"
            ) from exc
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            raise BrokerError(
                f"Redis at {where} is out of memory and refused to {what}: {detail}. Raise "
                "maxmemory or drain queues; nothing was stored by the refused command."
            ) from exc
        raise BrokerError(f"Redis at {where} failed to {what}: {detail}") from exc
