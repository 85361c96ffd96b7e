"""What the dashboard accepts from a request: Host names, query parameters, ids
and action bodies. Everything refused is a :class:`BadParameter`, answered with
400 and a JSON error naming the parameter (never a 500).

Ranges of the query parameters (documented in docs/monitoring.md):

=================  ===========================  =======
parameter          range                        default
=================  ===========================  =======
``limit``          1 .. 5000                    200
``seconds``        1 .. the monitor's history   300
``step``           1 .. ``seconds``             5
text filters       at most 255 characters       none
=================  ===========================  =======
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.exceptions import BadRequest

__all__ = [
    "LOOPBACK_HOSTS",
    "BadParameter",
    "body_id",
    "host_allowed",
    "host_name",
    "int_param",
    "normalize_hosts",
    "path_id",
    "text_param",
]

#: Host names the dashboard answers to without configuration.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Longest id or text parameter accepted (characters).
MAX_TEXT = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Characters an id in a URL path must not hold: a path separator (``/`` and the
#: ``\\`` browsers treat as one), a query or a fragment.
_PATH_CHARACTERS = re.compile(r"[/\\?#]")


class BadParameter(BadRequest):
    """A refused parameter: 400 with ``{"error": ..., "parameter": ...}``."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


def int_param(args: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """The integer ``args[name]`` (``default`` when absent or empty), within ``low..high``."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise BadParameter(name, f"must be an integer from {low} to {high}, not {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadParameter(
            name, f"must be an integer from {low} to {high}, not {str(raw)[:40]!r}"
        ) from None
    if not low <= value <= high:
        raise BadParameter(name, f"must be from {low} to {high}, not {value}")
    return value


def text_param(args: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str | None:
    """The text ``args[name]`` (``None`` when absent or empty), at most ``limit`` characters."""
    raw = args.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadParameter(name, f"must be a string, not {type(raw).__name__}")
    if len(raw) > limit:
        raise BadParameter(name, f"at most {limit} characters, not {len(raw)}")
    if _CONTROL.search(raw):
        raise BadParameter(name, "must not contain control characters")
    return raw


def body_id(value: Any, name: str) -> str:
    """An id sent in a JSON body: a non-empty string of at most 255 characters, no
    control characters (any other character is allowed: it never enters a URL)."""
    if not isinstance(value, str) or not value:
        raise BadParameter(name, "is required, as a non-empty string")
    checked = text_param({name: value}, name)
    assert checked is not None
    return checked


def path_id(value: str, name: str) -> str:
    """An id taken from a URL path: as :func:`body_id`, and without path characters
    (``/``, ``\\``, ``?``, ``#``) nor being ``.`` or ``..``, which a browser would
    resolve as a path step. Revoke such a task with ``POST /api/revoke``."""
    body_id(value, name)
    if _PATH_CHARACTERS.search(value) or value in (".", ".."):
        raise BadParameter(
            name,
            "must not contain '/', '\\\\', '?' or '#' nor be '.' or '..' in a URL "
            "(revoke such a task with POST /api/revoke and its id in the JSON body)",
        )
    return value


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value: no port, no IPv6 brackets, no final
    dot, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, _ = host[1:].partition("]")
    else:
        name, colon, port = host.rpartition(":")
        if not colon or not port.isdigit() or ":" in name:
            name = host  # no port (or a bare IPv6 address)
    return name.rstrip(".")


def normalize_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """Allowed host entries as :func:`host_allowed` compares them; a comma-separated
    string is split. ``.example.com`` matches the domain and its subdomains, ``*`` any."""
    out: list[str] = []
    for entry in names:
        for part in str(entry).split(","):
            part = part.strip()
            if part:
                out.append(part if part in ("*",) or part.startswith(".") else host_name(part))
    return tuple(dict.fromkeys(out))


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request's ``Host`` header names one of ``allowed`` (any port)."""
    if not host:
        return False
    name = host_name(host)
    if not name:
        return False
    for entry in allowed:
        if entry == "*" or entry == name:
            return True
        if entry.startswith(".") and (name == entry[1:] or name.endswith(entry)):
            return True
    return False
