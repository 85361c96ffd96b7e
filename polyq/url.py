"""URL helpers: splitting schemes, reading query options, redacting secrets."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["query_options", "redact", "scheme_of"]

_CREDENTIALS = re.compile(
    r"(?P<head>[a-z0-9+.\-]+://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)", re.I
)
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|secret|token|aws_secret_access_key|sas_token)=)[^&\s]*", re.I
)


def redact(text: str) -> str:
    """Replace every password in URLs within ``text`` by ``***``.

    Works on whole log lines too, so an error message that quotes a URL is safe.
    """
    text = _CREDENTIALS.sub(r"\g<head>***\g<tail>", text)
    return _SECRET_QUERY.sub(r"\g<head>***", text)


def scheme_of(url: str) -> str:
    """The scheme of ``url``, lower-cased (``"postgresql+psycopg"``)."""
    if "://" not in url:
        raise ValueError(f"not a URL (no '://'): {redact(url)!r}")
    return url.split("://", 1)[0].lower()


def query_options(url: str) -> dict[str, Any]:
    """The query string of ``url`` as a dict, with numbers and booleans converted."""
    options: dict[str, Any] = {}
    for key, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
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
