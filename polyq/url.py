"""URL helpers: splitting URLs, reading query options, redacting secrets.

How a URL is split (:func:`split_url`), so that a password typed as is, with
``@ : / ? # = &`` in it, is read whole and never taken for the host or the path::

    scheme://[user[:password]@]host-part[/path][?query][#fragment]

1. ``scheme:///...`` (nothing before the third slash, as SQLite's paths) has no user
   info and no host: the rest is the path, whatever characters it holds.
2. Otherwise the user info ends at the **last** ``@`` that is followed by a *host
   part*: host names, IPv4 addresses or ``[IPv6]`` addresses, each with an optional
   ``:port``, separated by commas, running up to ``/``, ``?``, ``#`` or the end.
3. The search for that ``@`` stops at the query string: the first ``?`` after a host
   part that is followed by ``name=value`` pairs (``?client_name=me@example.com``
   keeps its ``@`` in the query).
4. The user info is split at its first ``:`` into user and password; both are
   percent-decoded (``%40`` is ``@``), so encoded URLs keep working.

What the rule cannot read: an ``@`` in the path after a password (write ``%40``),
and a password holding ``?name=value`` after an ``@`` (percent-encode the password:
``urllib.parse.quote(password, safe="")``). Whitespace is never part of a URL.

:func:`redact` applies the same rule to URLs found in any text (log lines, error
messages, tracebacks) and hides, besides the password, every secret ``key=value``
(``password=``, ``sslpassword=``, ``token=``...: :data:`SECRET_KEY`), in URL query
strings, libpq DSNs and Python reprs alike.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from polyq.exceptions import ConfigurationError

__all__ = [
    "SECRET_KEY",
    "URLParts",
    "is_loopback",
    "query_options",
    "redact",
    "scheme_of",
    "split_url",
    "url_list",
    "warn_insecure",
]

_HOST = r"(?:\[[0-9A-Za-z:.%]*\]|[\w.~%\-]*)(?::[0-9]*)?"
_HOSTS = re.compile(rf"{_HOST}(?:,{_HOST})*")
# A query string as polyq's URLs write it: name[=value] pairs joined by "&".
_QUERY = re.compile(r"[\w.\-\[\]]+(?:=[^&]*)?(?:&+[\w.\-\[\]]+(?:=[^&]*)?)*&*")
_STRICT_ENDS = "/?#"
# In free text a URL may be quoted or bracketed: closing punctuation ends a host part.
_TEXT_ENDS = "/?#'\"()<>[]{},;`"
_SPACE = re.compile(r"\s")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_NEXT_URL = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")
# Schemes whose user info without ":" is a password (Celery's redis://secret@host)
# or a token (https://TOKEN@host): hidden whole.
_PASSWORD_ONLY = frozenset(
    {"redis", "rediss", "redis+sentinel", "rediss+sentinel", "sentinel", "http", "https"}
)

_SECRET_SUFFIX = (
    r"(?:password|passwd|pwd|passphrase|secret|secret_key|token|secret_access_key"
    r"|api_?key|private_key)"
)
#: Names of secret parameters, matched case-insensitively against the whole name:
#: ``password``, ``ssl_password``, ``sslpassword``, ``ssl_keyfile_password``,
#: ``passwd``, ``pwd``, ``secret``, ``client_secret``, ``token``, ``sas_token``,
#: ``aws_session_token``, ``aws_secret_access_key``, ``secret_key``, ``api_key``,
#: ``private_key``, ``passphrase``...
SECRET_KEY = rf"[\w.\-]*?{_SECRET_SUFFIX}"
_VALUE = r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&]*)"""
_VALUE_AT = re.compile(_VALUE)
# key=value (URL query strings, libpq DSNs "password='a b' host=db", kwargs reprs):
# found by the end of the key, since any prefix of it counts (sslpassword, aws_...).
# Searched in the lower-cased text: much faster than re.IGNORECASE on every log line.
_SECRET_ASSIGN = re.compile(rf"{_SECRET_SUFFIX}\s*=(?!=)\s*")
_SECRET_ASSIGN_I = re.compile(_SECRET_ASSIGN.pattern, re.I)
# 'key': 'value' and "key": "value": dict reprs and JSON.
_SECRET_ITEM = re.compile(rf"(?P<head>(?P<q>['\"])(?:{SECRET_KEY})(?P=q)\s*:\s*){_VALUE}", re.I)


@dataclasses.dataclass(frozen=True)
class URLParts:
    """A URL split by the rule of this module; user and password percent-decoded."""

    scheme: str
    username: str | None
    password: str | None
    #: The host part as written: ``host``, ``host:port``, ``[::1]:7000``, ``h1,h2:26379``.
    netloc: str
    path: str
    query: str
    fragment: str

    @property
    def hosts(self) -> list[tuple[str, int | None]]:
        """``[(host, port or None)...]`` of the host part (empty hosts kept as ``""``)."""
        out: list[tuple[str, int | None]] = []
        for part in self.netloc.split(","):
            if part.startswith("["):
                host, _, port = part[1:].partition("]")
                port = port.removeprefix(":")
            else:
                host, _, port = part.partition(":")
            out.append((unquote(host), int(port) if port else None))
        return out

    @property
    def hostname(self) -> str | None:
        """The first host, or ``None`` if the URL names none."""
        host = self.hosts[0][0] if self.netloc else ""
        return host or None

    @property
    def port(self) -> int | None:
        """The first host's port, or ``None``."""
        return self.hosts[0][1] if self.netloc else None

    def geturl(self) -> str:
        """The URL again, with user and password percent-encoded: safe to give to
        parsers that follow RFC 3986 strictly (SQLAlchemy, pika, urllib)."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        url = f"{self.scheme}://{userinfo}{self.netloc}{self.path}"
        if self.query:
            url += "?" + self.query
        if self.fragment:
            url += "#" + self.fragment
        return url


def _authority(rest: str, ends: str) -> tuple[int, int] | None:
    """``(index of the @ ending the user info or -1, end of the host part)`` in
    ``rest`` (the URL after ``://``), by the rule of the module docstring; ``None``
    when no host part can be found."""
    if rest.startswith("/"):
        return -1, 0
    best: tuple[int, int] | None = None
    at = -1
    while True:
        end = _HOSTS.match(rest, at + 1)
        if end is not None and (end.end() == len(rest) or rest[end.end()] in ends):
            best = (at, end.end())
            question = rest.find("?", end.end())
            if question >= 0:
                fragment = rest.find("#", question)
                stop = len(rest) if fragment < 0 else fragment
                if _QUERY.fullmatch(rest, question + 1, stop):
                    return best  # the query string starts here: its "@" are values
        at = rest.find("@", at + 1)
        if at < 0:
            return best


def split_url(url: str) -> URLParts:
    """Split ``url`` by the rule of the module docstring (passwords may hold ``@``,
    ``/``, ``?``, ``#``). Raises :class:`ConfigurationError` naming the URL, its
    password hidden, when it has no ``://`` or no readable host part."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"not a URL (no '://'): {_redact_scheme_less(url)!r}; expected "
            "scheme://[user[:password]@]host[:port][/path][?options]"
        )
    found = _authority(rest, _STRICT_ENDS)
    if found is None:
        raise ConfigurationError(
            f"cannot read the host and port of {redact(url)!r}: expected "
            "scheme://[user[:password]@]host[:port][/path][?options], with a numeric port"
        )
    at, host_end = found
    username = password = None
    if at >= 0:
        user, colon, secret = rest[:at].partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    tail = rest[host_end:]
    path_end = len(tail)
    for mark in "?#":
        index = tail.find(mark)
        if 0 <= index < path_end:
            path_end = index
    path, after = tail[:path_end], tail[path_end:]
    query = fragment = ""
    if after.startswith("?"):
        query, _, fragment = after[1:].partition("#")
    elif after.startswith("#"):
        fragment = after[1:]
    return URLParts(scheme, username, password, rest[at + 1 : host_end], path, query, fragment)


def redact(text: str) -> str:
    """``text`` with every secret hidden as ``***``: the password of each URL in it
    (read by the rule of the module docstring; for ``redis://secret@host`` and
    ``https://token@host`` the whole user info) and the value of every secret
    ``key=value`` or ``'key': 'value'`` (:data:`SECRET_KEY`).

    Works on whole log lines, error messages and tracebacks, so a message that
    quotes a URL or a DSN is safe to print or store.
    """
    if "://" in text:
        text = _redact_urls(text)
    if "=" in text:
        text = _hide_assignments(text)
    if ":" in text:
        text = _SECRET_ITEM.sub(_hide_value, text)
    return text


def _hidden(value: str) -> str:
    quote_char = value[:1] if value[:1] in ("'", '"') and len(value) > 1 else ""
    return f"{quote_char}***{quote_char}"


def _hide_value(match: re.Match[str]) -> str:
    value = match["value"]
    return f"{match['head']}{_hidden(value)}" if value else match[0]


def _hide_assignments(text: str) -> str:
    pieces: list[str] = []
    done = 0
    lowered = text.lower()
    # Positions agree unless lower() grew a character ("İ"); then search case-blind.
    keys = (
        _SECRET_ASSIGN.finditer(lowered)
        if len(lowered) == len(text)
        else _SECRET_ASSIGN_I.finditer(text)
    )
    for key in keys:
        if key.start() < done:
            continue  # inside a value already hidden
        value = _VALUE_AT.match(text, key.end())
        if value is None or not value["value"]:
            continue
        pieces += (text[done : key.end()], _hidden(value["value"]))
        done = value.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _scheme_starts(text: str) -> list[int]:
    """Where each ``scheme://`` of ``text`` starts (found from its "://": faster
    than a regular expression trying every letter)."""
    starts: list[int] = []
    found = text.find("://")
    while found >= 0:
        start = found
        while start > 0 and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        while start < found and not text[start].isalpha():
            start += 1  # a scheme starts with a letter
        if start < found and (not starts or start >= starts[-1]):
            starts.append(start)
        found = text.find("://", found + 3)
    return starts


def _redact_urls(text: str) -> str:
    starts = _scheme_starts(text)
    if not starts:
        return text
    pieces: list[str] = [text[: starts[0]]]
    for index, start in enumerate(starts):
        limit = starts[index + 1] if index + 1 < len(starts) else len(text)
        space = _SPACE.search(text, start, limit)
        end = space.start() if space else limit
        pieces.append(_redact_one(text[start:end]))
        pieces.append(text[end:limit])
    return "".join(pieces)


def _redact_one(token: str) -> str:
    scheme, _, rest = token.partition("://")
    found = _authority(rest, _TEXT_ENDS)
    # No host part we can read: hide everything up to the last "@" (too much rather
    # than too little).
    at = rest.rfind("@") if found is None else found[0]
    if at < 0:
        return token
    user, colon, secret = rest[:at].partition(":")
    if colon:
        hidden = f"{user}:***" if secret else rest[:at]
    elif scheme.lower() in _PASSWORD_ONLY and user:
        hidden = "***"
    else:
        return token
    return f"{scheme}://{hidden}{rest[at:]}"


def _redact_scheme_less(text: str) -> str:
    # "user:pw@host" without a scheme: read it as if it had one.
    return redact("x://" + text)[4:]


def scheme_of(url: str) -> str:
    """The scheme of ``url``, lower-cased (``"postgresql+psycopg"``)."""
    if "://" not in url:
        raise ValueError(f"not a URL (no '://'): {_redact_scheme_less(url)!r}")
    return url.split("://", 1)[0].lower()


def url_list(text: str) -> list[str]:
    """The URLs of a ``;``-separated list (Celery's ``sentinel://h1;sentinel://h2``,
    RabbitMQ's failover lists). A ``;`` separates only when another ``scheme://``
    follows it: a password may hold one."""
    return [part.strip() for part in _NEXT_URL.split(text) if part.strip()]


def query_options(url: str) -> dict[str, Any]:
    """The query string of ``url`` (of each URL of a ``;``-separated list, the later
    winning) as a dict, with numbers and booleans converted."""
    options: dict[str, Any] = {}
    for one in url_list(url):
        try:
            query = split_url(one).query
        except ConfigurationError:  # the plugin says what is wrong with its URL
            query = one.partition("?")[2].partition("#")[0]
        for key, raw in parse_qsl(query, keep_blank_values=True):
            options[key] = _convert(raw)
    return options


def _convert(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine: no host or a socket path (a Unix socket),
    ``localhost``, ``127.0.0.0/8`` or ``::1``. Traffic to it never crosses a network,
    so an unverified (or absent) TLS layer exposes nothing there."""
    if not host or host.startswith(("/", "@")):
        return True
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_insecure(logger: logging.Logger, url: str, problem: str, fix: str) -> bool:
    """Log, once per process for each URL and problem, a WARNING that the connection
    to ``url`` (redacted) is not protected as it should be: ``problem`` says how,
    ``fix`` what to set instead. Returns whether it logged."""
    key = (redact(url), problem)
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    logger.warning("insecure connection to %s: %s. %s", key[0], problem, fix)
    return True
