"""X.509 signing (Celery's settings): loading the private key, its certificate and
the store of trusted certificates (a glob of PEM files), each failure saying which
file was wrong and how to fix it; signing and verifying with them.

Imported only when certificates are configured: it needs ``cryptography``
(``polyq[auth]``)."""

from __future__ import annotations

import datetime
import glob
import logging
import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from polyq.exceptions import ConfigurationError, SecurityError
from polyq.security.shared import read_file

__all__ = [
    "CertificateKey",
    "TrustedCertificates",
    "fingerprint",
    "load_cert_store",
    "load_certificate",
    "load_private_key",
]

logger = logging.getLogger("polyq.security")

#: Digests ``security_digest`` may name. SHA-1 and MD5 are refused: collisions in them
#: can be computed, so a signature over them proves little.
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384,
    "sha3_512": hashes.SHA3_512,
}

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | (ed448.Ed448PrivateKey)
)


def digest_algorithm(name: str) -> hashes.HashAlgorithm:
    """The hash ``security_digest`` names (``sha256``; Celery's spellings ``SHA256`` and
    ``sha-256`` too)."""
    key = str(name).lower().replace("-", "")
    if key.startswith("sha3") and "_" not in key:
        key = "sha3_" + key[4:]
    found = _DIGESTS.get(key)
    if found is None:
        raise ConfigurationError(
            f"security_digest {name!r} is not supported; use one of {', '.join(_DIGESTS)} "
            "(sha1 and md5 are refused as too weak)"
        )
    return found()


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER form, in hex: how a message names its signer."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_private_key(path: str, password: str | bytes | None = None) -> PrivateKey:
    """The PEM private key at ``path`` (``security_key``), decrypted with ``password``."""
    data = read_file(path, "security_key", "the private key")
    secret = password.encode() if isinstance(password, str) else password
    try:
        key = serialization.load_pem_private_key(data, password=secret or None)
    except TypeError as exc:
        hint = (
            "set security_key_password to its password"
            if secret is None
            else "security_key_password is set but the key is not encrypted; unset it"
        )
        raise ConfigurationError(f"security_key {path!r}: {str(exc).rstrip('.')}; {hint}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"security_key {path!r} is not a PEM private key polyq can use, or its password "
            f"(security_key_password) is wrong: {exc}"
        ) from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ConfigurationError(
            f"security_key {path!r} is a {type(key).__name__}; use an RSA, EC, Ed25519 or Ed448 key"
        )
    return key


def load_certificate(path: str, setting: str = "security_certificate") -> x509.Certificate:
    """The first PEM certificate in ``path``."""
    certs = _load_pem_certificates(path, setting)
    return certs[0]


def _load_pem_certificates(path: str, setting: str) -> list[x509.Certificate]:
    data = read_file(path, setting, "the certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigurationError(
            f"{setting}: {path!r} holds no PEM certificate ({exc}); it must contain "
            "'-----BEGIN CERTIFICATE-----' blocks"
        ) from None


def load_cert_store(pattern: str) -> dict[str, x509.Certificate]:
    """Every certificate in the PEM files ``pattern`` matches (``security_cert_store``,
    a glob), by fingerprint. Expired ones are kept (a message signed with one is
    refused as *expired*, which says more than *untrusted*) and logged."""
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise ConfigurationError(
            f"security_cert_store {pattern!r} matches no file; set it to a glob of the PEM "
            "certificates of every trusted signer, e.g. '/etc/polyq/certs/*.pem'"
        )
    store: dict[str, x509.Certificate] = {}
    now = datetime.datetime.now(datetime.UTC)
    for path in paths:
        for cert in _load_pem_certificates(path, "security_cert_store"):
            if cert.not_valid_after_utc < now:
                logger.warning(
                    "certificate %s in %s expired on %s: messages it signed are refused",
                    cert.subject.rfc4514_string(),
                    path,
                    cert.not_valid_after_utc.isoformat(),
                )
            store[fingerprint(cert)] = cert
    return store


class CertificateKey:
    """Signs with an X.509 certificate's private key (Celery's ``security_key`` and
    ``security_certificate``)."""

    def __init__(self, key: PrivateKey, cert: x509.Certificate, digest: str = "sha256") -> None:
        if not _same_public_key(key, cert):
            raise ConfigurationError(
                f"security_key does not belong to security_certificate "
                f"({cert.subject.rfc4514_string()}); give the key the certificate was issued for"
            )
        now = datetime.datetime.now(datetime.UTC)
        if cert.not_valid_after_utc < now:
            raise ConfigurationError(
                f"security_certificate {cert.subject.rfc4514_string()} expired on "
                f"{cert.not_valid_after_utc.isoformat()}; issue a new one and add it to "
                "security_cert_store"
            )
        self.key = key
        self.cert = cert
        self.hash = digest_algorithm(digest)
        self.alg = f"x509-{self.hash.name}"
        self.identity = fingerprint(cert)

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        key = self.key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, _pss(self.hash), self.hash)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(self.hash))
        return key.sign(data)


class TrustedCertificates:
    """Verifies signatures against the certificates of ``security_cert_store``."""

    def __init__(self, store: dict[str, x509.Certificate], digest: str = "sha256") -> None:
        self.store = store
        self.hash = digest_algorithm(digest)
        self.alg = f"x509-{self.hash.name}"

    def verify(self, signer: str, data: bytes, signature: bytes) -> None:
        """Raise :class:`SecurityError` unless ``signature`` is ``signer``'s over ``data``
        and ``signer``'s certificate is in the store and valid now."""
        cert = self.store.get(signer)
        if cert is None:
            raise SecurityError(
                f"signed by an untrusted certificate (sha256 fingerprint {signer[:16]}...): "
                "it is not in security_cert_store"
            )
        now = datetime.datetime.now(datetime.UTC)
        subject = cert.subject.rfc4514_string()
        if cert.not_valid_after_utc < now:
            raise SecurityError(
                f"signed by certificate {subject}, which expired on "
                f"{cert.not_valid_after_utc.isoformat()}"
            )
        if cert.not_valid_before_utc > now:
            raise SecurityError(
                f"signed by certificate {subject}, which is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}"
            )
        public: Any = cert.public_key()
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, data, _pss(self.hash), self.hash)
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, data, ec.ECDSA(self.hash))
            elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                public.verify(signature, data)
            else:
                raise SecurityError(f"certificate {subject} has an unsupported key type")
        except InvalidSignature:
            raise SecurityError(
                f"bad signature: the message was altered after {subject} signed it, or "
                "was not signed with that certificate's key"
            ) from None


def _pss(digest: hashes.HashAlgorithm) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH)


def _same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
