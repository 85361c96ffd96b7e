"""Serializers (json, msgpack, pickle) and compression, chosen by name.

A message's content type travels in its headers, so a worker refuses one whose
type is not in ``accept_content`` before a single byte of it is deserialized.
Pickle is never accepted unless listed.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import uuid
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from polyq.exceptions import ConfigurationError, ContentDisallowed, DecodeError

__all__ = [
    "AUTH",
    "AUTH_CONTENT_TYPE",
    "Serializer",
    "compress",
    "decompress",
    "dumps",
    "get_serializer",
    "loads",
]


@dataclasses.dataclass(frozen=True)
class Serializer:
    """A named way to turn Python values into bytes and back."""

    name: str
    content_type: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _json_default(value: Any) -> Any:
    # The types Celery users pass to tasks most; they arrive as strings, as with Celery's json.
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(
        f"{type(value).__name__} is not JSON serializable; pass plain data (str, int, float, "
        "bool, None, list, dict) or choose another serializer (task_serializer='msgpack')"
    )


# Built once: json.dumps() with options builds a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def _json_dumps(value: Any) -> bytes:
    return _JSON_ENCODER.encode(value).encode()


def _msgpack_dumps(value: Any) -> bytes:
    import msgpack

    packed: bytes = msgpack.packb(value, default=_json_default, use_bin_type=True)
    return packed


def _msgpack_loads(data: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _pickle_dumps(value: Any) -> bytes:
    import pickle

    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _pickle_loads(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


_SERIALIZERS = {
    s.name: s
    for s in (
        Serializer("json", "application/json", _json_dumps, json.loads),
        Serializer("msgpack", "application/x-msgpack", _msgpack_dumps, _msgpack_loads),
        Serializer("pickle", "application/x-python-serialize", _pickle_dumps, _pickle_loads),
    )
}
_BY_CONTENT_TYPE = {s.content_type: s for s in _SERIALIZERS.values()}

#: Celery's serializer name for signed messages, and polyq's content type for them. Not
#: a serializer of its own: a signed message's body is in an inner serializer, and its
#: signature in a header (``polyq.security``); ``accept_content=['auth']`` accepts only
#: signed messages.
AUTH = "auth"
AUTH_CONTENT_TYPE = "application/x-polyq-auth"


def get_serializer(name_or_type: str) -> Serializer:
    """The serializer named ``name_or_type`` (``"json"``) or with that content type."""
    found = _SERIALIZERS.get(name_or_type) or _BY_CONTENT_TYPE.get(name_or_type)
    if found is None and name_or_type in (AUTH, AUTH_CONTENT_TYPE):
        raise ConfigurationError(
            "the 'auth' serializer signs messages with the keys app.setup_security() loads; "
            "call app.setup_security() (see docs/security.md)"
        )
    if found is None:
        raise ConfigurationError(
            f"unknown serializer {name_or_type!r}; choose one of {', '.join(_SERIALIZERS)}"
        )
    return found


def accepted_types(accept: Iterable[str]) -> frozenset[str]:
    """Content types for an ``accept_content`` list of names or content types
    (``auth``: signed messages)."""
    return frozenset(
        AUTH_CONTENT_TYPE
        if item in (AUTH, AUTH_CONTENT_TYPE)
        else get_serializer(item).content_type
        for item in accept
    )


def dumps(value: Any, serializer: str) -> tuple[str, bytes]:
    """Serialize ``value``; return its content type and bytes."""
    s = get_serializer(serializer)
    return s.content_type, s.dumps(value)


def loads(data: bytes, content_type: str, accept: frozenset[str]) -> Any:
    """Deserialize ``data`` if ``content_type`` is accepted.

    Raises :class:`ContentDisallowed` without touching ``data`` when the type is
    not in ``accept``, and :class:`DecodeError` when the bytes do not parse.
    """
    if content_type not in accept:
        raise ContentDisallowed(
            f"content type {content_type!r} is not in accept_content "
            f"({', '.join(sorted(accept))}); the message was not deserialized"
        )
    try:
        return _BY_CONTENT_TYPE[content_type].loads(data)
    except Exception as exc:
        raise DecodeError(f"cannot decode {content_type} body: {exc}") from exc


_COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": (zlib.compress, zlib.decompress),
}


def _gzip() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    import gzip

    return gzip.compress, gzip.decompress


def compress(data: bytes, method: str) -> bytes:
    """Compress ``data`` with ``method`` (``gzip`` or ``zlib``)."""
    return (_gzip() if method == "gzip" else _codec(method))[0](data)


def decompress(data: bytes, method: str) -> bytes:
    """Undo :func:`compress`."""
    try:
        return (_gzip() if method == "gzip" else _codec(method))[1](data)
    except (OSError, zlib.error) as exc:
        raise DecodeError(f"cannot decompress {method} body: {exc}") from exc


def _codec(method: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    try:
        return _COMPRESSORS[method]
    except KeyError:
        raise ConfigurationError(f"unknown compression {method!r}; choose gzip or zlib") from None
