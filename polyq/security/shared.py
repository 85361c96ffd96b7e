"""The shared-key mode (polyq's own): HMAC-SHA256 with keys every node shares, from
the standard library alone; and reading the files the settings name."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from polyq.exceptions import ConfigurationError, SecurityError

__all__ = ["MIN_SHARED_KEY_BYTES", "SharedKeys", "load_shared_keys", "read_file"]

#: A shared key shorter than this (bytes) is refused: HMAC is only as strong as its key.
MIN_SHARED_KEY_BYTES = 16


def read_file(path: str, setting: str, what: str) -> bytes:
    """The bytes of ``path``, or a :class:`ConfigurationError` naming ``setting``."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting}: cannot read {what} {path!r} ({exc.strerror or exc}); "
            f"set {setting} to the path of a readable file"
        ) from None


def load_shared_keys(key: Any = None, key_file: str | None = None) -> list[bytes]:
    """Shared keys from ``security_shared_key`` (a string, bytes, or a list of them) or
    ``security_shared_key_file`` (one key per line); the first one signs."""
    if key is not None and key_file:
        raise ConfigurationError("set security_shared_key or security_shared_key_file, not both")
    if key_file:
        text = read_file(key_file, "security_shared_key_file", "the shared key file")
        raw: list[Any] = [line.strip() for line in text.splitlines() if line.strip()]
        where = f"security_shared_key_file {key_file!r}"
    else:
        raw = list(key) if isinstance(key, list | tuple) else [key]
        where = "security_shared_key"
    keys = [k.encode() if isinstance(k, str) else k for k in raw]
    if not keys or any(not isinstance(k, bytes) for k in keys):
        raise ConfigurationError(f"{where}: give one or more keys (strings or bytes)")
    short = [i for i, k in enumerate(keys) if len(k) < MIN_SHARED_KEY_BYTES]
    if short:
        raise ConfigurationError(
            f"{where}: key #{short[0] + 1} has fewer than {MIN_SHARED_KEY_BYTES} bytes; use "
            "a random key, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return keys


def _key_id(key: bytes) -> str:
    # Names the key in messages without revealing it (a hash of it, domain-separated).
    return hashlib.sha256(b"polyq-shared-key-id\0" + key).hexdigest()[:16]


class SharedKeys:
    """HMAC-SHA256 with shared keys (polyq's ``security_shared_key``): the first key
    signs, every key verifies (rotation: add the new key second, then make it first)."""

    alg = "hmac-sha256"

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = {_key_id(k): k for k in keys}
        self.identity = _key_id(keys[0])
        self._signing = keys[0]

    def sign(self, data: bytes) -> bytes:
        """The HMAC of ``data`` under the first key."""
        return hmac.digest(self._signing, data, "sha256")

    def verify(self, signer: str, data: bytes, signature: bytes) -> None:
        """Raise :class:`SecurityError` unless ``signature`` is the HMAC of ``data``
        under the shared key ``signer`` names."""
        key = self.keys.get(signer)
        if key is None:
            raise SecurityError(
                f"signed with an unknown shared key (key id {signer[:16]}): it is not in "
                "security_shared_key"
            )
        if not hmac.compare_digest(hmac.digest(key, data, "sha256"), signature):
            raise SecurityError(
                "bad signature: the message was altered, or signed with another key"
            )
