"""The signed wire forms: :class:`Signer` signs task messages and broadcasts (control
commands, events), :class:`Verifier` checks them.

Task messages. The body is left as it is (the inner serializer's bytes, compressed
or not); ``content-type`` becomes ``application/x-polyq-auth`` and one header,
``signature``, carries a compact JSON object::

    {"v": 1, "alg": "x509-sha256", "signer": "<sha256 fingerprint or key id>",
     "type": "application/json", "headers": ["compression", "content-type", "id", ...],
     "sig": "<base64>"}

The signature covers the *canonical form*: a JSON list of a version tag, the kind
(``task``), ``alg``, ``signer``, the inner content type, the timestamp (``null`` for
tasks) and the ``[name, value]`` pairs of every header listed (all the headers the
message had when it was signed, the envelope's included), then a newline, then the
body bytes. The verifier refuses a message where an envelope header (task, id, eta,
retries...) is present but not listed, and hands on only the listed headers, so
nothing unsigned reaches the task.

Broadcasts (``kind`` ``control`` or ``event``) have no headers: the signed form is
``polyq-signed/1 <JSON meta>\\n<payload>``, the meta holding ``alg``, ``signer``,
``ts`` (the time of signing) and ``sig``. A broadcast older than ``max_age`` seconds
is refused, so a recorded command cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
from typing import Any, Protocol

from polyq.exceptions import SecurityError
from polyq.message import RESERVED_HEADERS
from polyq.serialization import AUTH_CONTENT_TYPE
from polyq.transport import Delivery, OutgoingMessage

__all__ = [
    "BROADCAST_MAGIC",
    "KIND_CONTROL",
    "KIND_EVENT",
    "KIND_TASK",
    "SIGNATURE_HEADER",
    "Signer",
    "SigningKey",
    "TrustStore",
    "Verifier",
]

SIGNATURE_HEADER = "signature"
BROADCAST_MAGIC = b"polyq-signed/1 "
_VERSION = "polyq-auth/1"
#: What a signature is for: a task message, a control command or an event batch.
#: Part of what is signed, so one kind cannot be passed off as another.
KIND_TASK, KIND_CONTROL, KIND_EVENT = "task", "control", "event"


class SigningKey(Protocol):
    """What signs: an X.509 key (:class:`~polyq.security.keys.CertificateKey`) or a
    shared key (:class:`~polyq.security.keys.SharedKeys`)."""

    alg: str
    identity: str

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""


class TrustStore(Protocol):
    """What verifies: trusted certificates or shared keys."""

    alg: str

    def verify(self, signer: str, data: bytes, signature: bytes) -> None:
        """Raise :class:`SecurityError` unless the signature is good and trusted."""


# Built once: json.dumps() with options builds a new encoder on every call (signing is
# on the path of every task sent).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _canonical(
    kind: str,
    alg: str,
    signer: str,
    inner_type: str,
    ts: float | None,
    headers: list[list[str]],
    body: bytes,
) -> bytes:
    # JSON escapes every string, so the prefix ends unambiguously at its last bracket.
    prefix = _ENCODER.encode([_VERSION, kind, alg, signer, inner_type, ts, headers])
    return prefix.encode() + b"\n" + body


def _compact(value: Any) -> str:
    return _ENCODER.encode(value)


class Signer:
    """Signs what an app sends."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def sign_task(self, message: OutgoingMessage) -> OutgoingMessage:
        """``message`` signed: every header it has and its body (see the module doc)."""
        headers = dict(message.headers)
        headers.pop(SIGNATURE_HEADER, None)
        inner_type = headers.get("content-type", "application/json")
        headers["content-type"] = AUTH_CONTENT_TYPE
        names = sorted(headers)
        key = self.key
        data = _canonical(
            KIND_TASK,
            key.alg,
            key.identity,
            inner_type,
            None,
            [[n, headers[n]] for n in names],
            message.body,
        )
        meta = {
            "v": 1,
            "alg": key.alg,
            "signer": key.identity,
            "type": inner_type,
            "headers": names,
            "sig": base64.b64encode(key.sign(data)).decode(),
        }
        headers[SIGNATURE_HEADER] = _compact(meta)
        # replace(), not a new OutgoingMessage: a field added to it later is kept.
        return dataclasses.replace(message, headers=headers)

    def sign_broadcast(self, kind: str, payload: bytes) -> bytes:
        """``payload`` (a control command or an event batch) in its signed form."""
        key = self.key
        ts = round(time.time(), 3)
        data = _canonical(kind, key.alg, key.identity, "", ts, [], payload)
        meta = {
            "alg": key.alg,
            "signer": key.identity,
            "ts": ts,
            "sig": base64.b64encode(key.sign(data)).decode(),
        }
        return BROADCAST_MAGIC + _compact(meta).encode() + b"\n" + payload


class Verifier:
    """Checks what an app receives against its trust store."""

    def __init__(self, trust: TrustStore, max_age: float | None = 300.0) -> None:
        self.trust = trust
        self.max_age = max_age

    def verify_task(self, delivery: Delivery) -> Delivery:
        """The delivery with only its signed headers and its inner content type, or
        :class:`SecurityError` saying why it is refused."""
        headers = delivery.headers
        raw = headers.get(SIGNATURE_HEADER)
        if headers.get("content-type") != AUTH_CONTENT_TYPE or raw is None:
            raise SecurityError(
                f"unsigned message (content type {headers.get('content-type')!r}); this "
                "worker runs only messages signed by a trusted certificate (setup_security)"
            )
        meta = _parse_meta(raw)
        names = meta.get("headers")
        inner_type = meta.get("type")
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or not isinstance(inner_type, str)
        ):
            raise SecurityError("malformed signature header: 'headers' or 'type' is missing")
        listed = set(names)
        missing = sorted(listed.difference(headers))
        if missing:
            raise SecurityError(f"signed header(s) {missing} are missing from the message")
        envelope = RESERVED_HEADERS - {SIGNATURE_HEADER}
        unsigned = sorted(n for n in headers if n in envelope and n not in listed)
        if unsigned:
            raise SecurityError(f"header(s) {unsigned} were added after signing")
        if "content-type" not in listed:
            raise SecurityError("the content type is not covered by the signature")
        signer, signature = self._check_alg(meta)
        data = _canonical(
            KIND_TASK,
            self.trust.alg,
            signer,
            inner_type,
            None,
            [[n, headers[n]] for n in names],
            delivery.body,
        )
        self.trust.verify(signer, data, signature)
        verified = {n: headers[n] for n in names}
        verified["content-type"] = inner_type
        return dataclasses.replace(delivery, headers=verified)

    def verify_broadcast(self, kind: str, body: bytes) -> bytes:
        """The payload of a signed broadcast, or :class:`SecurityError`."""
        if not body.startswith(BROADCAST_MAGIC):
            raise SecurityError(f"unsigned {kind} message")
        line, newline, payload = body[len(BROADCAST_MAGIC) :].partition(b"\n")
        if not newline:
            raise SecurityError(f"malformed signed {kind} message")
        meta = _parse_meta(line.decode(errors="replace"))
        ts = meta.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise SecurityError(f"signed {kind} message without a time")
        if self.max_age is not None and abs(time.time() - ts) > self.max_age:
            raise SecurityError(
                f"{kind} message signed {time.time() - ts:.0f}s ago, outside "
                f"security_max_age={self.max_age:g}s (replayed, or the clocks differ)"
            )
        signer, signature = self._check_alg(meta)
        data = _canonical(kind, self.trust.alg, signer, "", ts, [], payload)
        self.trust.verify(signer, data, signature)
        return payload

    def _check_alg(self, meta: dict[str, Any]) -> tuple[str, bytes]:
        # The algorithm is the verifier's own, never the message's choice.
        if meta.get("alg") != self.trust.alg:
            raise SecurityError(
                f"signed with {meta.get('alg')!r}, but this side verifies {self.trust.alg!r} "
                "(security_digest or the signing mode differ)"
            )
        signer = meta.get("signer")
        sig = meta.get("sig")
        if not isinstance(signer, str) or not isinstance(sig, str):
            raise SecurityError("malformed signature header: 'signer' or 'sig' is missing")
        try:
            return signer, base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise SecurityError("malformed signature: 'sig' is not base64") from None


def _parse_meta(raw: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise SecurityError("malformed signature header: not a JSON object")
    return meta
