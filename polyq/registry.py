"""Find transport and result-backend plugins by URL scheme, through entry points.

The built-in plugins register in ``pyproject.toml`` exactly as a third-party one
would, under the groups ``polyq.transports`` and ``polyq.backends``; an entry
point's name is the URL scheme it serves. Resolution of a URL's scheme:

1. the scheme itself (``redis+sentinel``);
2. Celery's prefixes ``sqla+`` and ``db+`` are dropped (``sqla+postgresql://`` →
   ``postgresql://``) and the rest resolved again;
3. the base scheme before ``+`` (``postgresql+psycopg`` → ``postgresql``).
"""

from __future__ import annotations

import difflib
import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from polyq.backend import ResultBackend
from polyq.exceptions import UnknownScheme
from polyq.transport import Transport
from polyq.url import query_options, redact, scheme_of

__all__ = ["BACKEND_GROUP", "TRANSPORT_GROUP", "create_backend", "create_transport", "resolve"]

TRANSPORT_GROUP = "polyq.transports"
BACKEND_GROUP = "polyq.backends"

#: Which extra installs the client library of each built-in scheme.
_EXTRAS = {
    "redis": "redis",
    "rediss": "redis",
    "redis+sentinel": "redis",
    "sentinel": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "pyamqp": "rabbitmq",
    "sqs": "sqs",
    "dynamodb": "sqs",
    "postgresql": "postgres",
    "postgres": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_CELERY_PREFIXES = ("sqla+", "db+")
_NO_EQUIVALENT = {
    "rpc": "Celery's rpc:// result backend has no polyq equivalent (results are not sent "
    "back over the broker); use a result store such as redis://, a SQL URL or memory://.",
}

P = TypeVar("P", Transport, ResultBackend)


@functools.cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name.lower(): ep for ep in entry_points(group=group)}


def refresh() -> None:
    """Forget the entry points read so far, so plugins installed (or put on
    ``sys.path``) since are found; they are read once per process otherwise."""
    _entry_points.cache_clear()


def installed_schemes(group: str) -> list[str]:
    """The schemes that plugins registered in ``group``."""
    return sorted(_entry_points(group))


def resolve(url: str, group: str) -> tuple[type[Any], str]:
    """Return the plugin class for ``url`` in ``group``, and the URL to give it
    (Celery's ``sqla+``/``db+`` prefix removed).

    Raises :class:`UnknownScheme` naming the scheme, the installed schemes and
    the ``pip install`` that fixes it.
    """
    scheme = scheme_of(url)
    if scheme in _NO_EQUIVALENT:
        raise UnknownScheme(_NO_EQUIVALENT[scheme])
    for prefix in _CELERY_PREFIXES:
        if scheme.startswith(prefix):
            url = url[len(prefix) :]
            scheme = scheme[len(prefix) :]
    available = _entry_points(group)
    for candidate in (scheme, scheme.split("+", 1)[0]):
        if candidate in available:
            return _load(available[candidate], candidate, group), url
    raise UnknownScheme(_unknown_message(scheme, group))


def _load(ep: EntryPoint, scheme: str, group: str) -> type[Any]:
    try:
        cls = ep.load()
    except ImportError as exc:
        extra = _EXTRAS.get(scheme, scheme)
        raise UnknownScheme(
            f"the {scheme}:// plugin ({ep.value}) needs a client library that is not "
            f'installed ({exc}); fix it with: pip install "polyq[{extra}]"'
        ) from exc
    base = Transport if group == TRANSPORT_GROUP else ResultBackend
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"entry point {ep.name} = {ep.value} is not a {base.__name__} subclass")
    return cls


def _unknown_message(scheme: str, group: str) -> str:
    kind = "transport (broker)" if group == TRANSPORT_GROUP else "result backend"
    installed = installed_schemes(group)
    close = difflib.get_close_matches(scheme, installed + list(_EXTRAS), n=1)
    hint = f" Did you mean {close[0]}://?" if close else ""
    extra = _EXTRAS.get(scheme)
    fix = (
        f' Install it with: pip install "polyq[{extra}]".'
        if extra
        else " If a third-party plugin serves it, pip install that plugin; the built-in"
        ' brokers come with pip install "polyq[redis]", "polyq[rabbitmq]", "polyq[sqs]",'
        ' "polyq[postgres]" or "polyq[mysql]".'
    )
    return (
        f"no {kind} plugin for the URL scheme {scheme!r}.{hint} Installed schemes "
        f"({group}): {', '.join(installed) or 'none'}.{fix}"
    )


def create_transport(url: str, **options: Any) -> Transport:
    """Build the transport for ``url``; query-string options override ``options``."""
    cls, url = resolve(url, TRANSPORT_GROUP)
    instance: Transport = cls(url, **{**options, **query_options(url)})
    return instance


def create_backend(url: str, **options: Any) -> ResultBackend:
    """Build the result backend for ``url``; query-string options override ``options``."""
    cls, url = resolve(url, BACKEND_GROUP)
    instance: ResultBackend = cls(url, **{**options, **query_options(url)})
    return instance


__all__ += ["installed_schemes", "redact", "refresh"]
