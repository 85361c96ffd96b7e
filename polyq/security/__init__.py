"""Message signing (``app.setup_security()``): task messages, control commands and
events signed by the sender and verified by the receiver, with Celery's settings
(X.509 key, certificate and certificate store) or a shared key (HMAC-SHA256).

Layer: just above the message envelope (it signs ``polyq.message`` envelopes); the
app, the worker, control and events use it. See docs/security.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from polyq.exceptions import ConfigurationError
from polyq.security.shared import SharedKeys, load_shared_keys
from polyq.security.signing import (
    KIND_CONTROL,
    KIND_EVENT,
    KIND_TASK,
    SIGNATURE_HEADER,
    Signer,
    Verifier,
)
from polyq.serialization import AUTH, AUTH_CONTENT_TYPE, accepted_types
from polyq.transport import Delivery

logger = logging.getLogger("polyq.security")

__all__ = [
    "AUTH",
    "AUTH_CONTENT_TYPE",
    "KIND_CONTROL",
    "KIND_EVENT",
    "KIND_TASK",
    "SIGNATURE_HEADER",
    "Security",
    "Signer",
    "Verifier",
    "build",
    "open_task",
]


@dataclasses.dataclass(frozen=True)
class Security:
    """What ``setup_security()`` gives an app: how it signs, how it verifies, and the
    serializers of the bodies inside signed messages."""

    signer: Signer
    verifier: Verifier
    #: The serializer of a signed message's body (Celery's ``serializer`` argument).
    serializer: str
    #: Content types a verified body may have (``allowed_serializers``).
    accept: frozenset[str]
    #: ``"x509"`` or ``"shared-key"``.
    mode: str


def build(
    *,
    key: str | None = None,
    key_password: str | bytes | None = None,
    cert: str | None = None,
    store: str | None = None,
    digest: str = "sha256",
    shared_key: Any = None,
    shared_key_file: str | None = None,
    serializer: str = "json",
    allowed_serializers: Sequence[str] | None = None,
    max_age: float | None = 300.0,
) -> Security:
    """Load the keys and make a :class:`Security`; every missing or wrong piece is a
    :class:`ConfigurationError` naming the setting (or file) and the fix."""
    if serializer == AUTH:
        raise ConfigurationError(
            "the serializer inside signed messages cannot be 'auth'; use json or msgpack"
        )
    accept = accepted_types(allowed_serializers or [serializer])
    if AUTH_CONTENT_TYPE in accept:
        raise ConfigurationError(
            "allowed_serializers lists the bodies inside signed messages; "
            "'auth' cannot be one of them"
        )
    x509_given = [
        name
        for name, v in (
            ("security_key", key),
            ("security_certificate", cert),
            ("security_cert_store", store),
        )
        if v
    ]
    if shared_key is not None or shared_key_file:
        if x509_given:
            raise ConfigurationError(
                f"both a shared key and {', '.join(x509_given)} are set; choose one way of "
                "signing (certificates, or security_shared_key)"
            )
        keys = SharedKeys(load_shared_keys(shared_key, shared_key_file))
        return Security(Signer(keys), Verifier(keys, max_age), serializer, accept, "shared-key")
    missing = [
        name
        for name, v in (
            ("security_key", key),
            ("security_certificate", cert),
            ("security_cert_store", store),
        )
        if not v
    ]
    if missing:
        raise ConfigurationError(
            f"setup_security() needs {', '.join(missing)} (paths of the PEM private key, its "
            "certificate, and a glob of the trusted certificates), or security_shared_key "
            "for the shared-key mode; see docs/security.md"
        )
    assert key is not None and cert is not None and store is not None  # noqa: PT018
    try:
        # Only here: cryptography is an optional dependency (polyq[auth]).
        from polyq.security.keys import (
            CertificateKey,
            TrustedCertificates,
            fingerprint,
            load_cert_store,
            load_certificate,
            load_private_key,
        )
    except ImportError as exc:
        raise ConfigurationError(
            f"signing with certificates needs the cryptography package ({exc}); "
            "pip install 'polyq[auth]'"
        ) from None
    certificate = load_certificate(cert)
    signing_key = CertificateKey(load_private_key(key, key_password), certificate, digest)
    trusted = load_cert_store(store)
    if fingerprint(certificate) not in trusted:
        # A warning, not an error: a client may sign for workers whose store differs.
        logger.warning(
            "security_certificate %r is not in security_cert_store %r: a worker using that "
            "store refuses what this app signs (its retries too); add the certificate to it",
            cert,
            store,
        )
    verifier = Verifier(TrustedCertificates(trusted, digest), max_age)
    return Security(Signer(signing_key), verifier, serializer, accept, "x509")


def open_task(
    security: Security | None, delivery: Delivery, accept: frozenset[str]
) -> tuple[Delivery, frozenset[str]]:
    """What to decode and the content types its body may have: a signed message
    verified (only its signed headers kept; :class:`SecurityError` when it does not
    hold), any other as it is (``accept_content`` then refuses it if signing is on)."""
    if security is None or delivery.headers.get("content-type") != AUTH_CONTENT_TYPE:
        return delivery, accept
    return security.verifier.verify_task(delivery), security.accept
