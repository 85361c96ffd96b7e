"""Throw-away keys and certificates for tests of message signing: a CA, signers it
issues (trusted or not, valid or expired), written as PEM files into a directory.

Never for production: keys are unencrypted unless a password is given, and live as
long as the directory. ``make_pki(tmp_path)`` returns the paths ``setup_security``
takes::

    pki = make_pki(tmp_path)
    app.conf.update(security_key=pki.key, security_certificate=pki.cert,
                    security_cert_store=pki.store)
    app.setup_security()
"""

from __future__ import annotations

import dataclasses
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

__all__ = ["PKI", "Signer", "issue", "make_pki"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclasses.dataclass(frozen=True)
class Signer:
    """A signer's key and certificate files."""

    key: str
    cert: str


@dataclasses.dataclass(frozen=True)
class PKI:
    """Files for one test: the trusted signer, the store (a glob), and signers the
    store does not trust or whose certificate expired."""

    key: str
    cert: str
    store: str
    ca_cert: str
    #: Issued by the same CA but not in the store.
    untrusted: Signer
    #: In the store, but expired.
    expired: Signer
    #: A second trusted signer (in the store): key rotation.
    second: Signer


def _new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}; use rsa, ec or ed25519")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    common_name: str,
    key: PrivateKey,
    ca_key: PrivateKey | None = None,
    ca_name: str | None = None,
    *,
    days: float = 30,
    expired: bool = False,
    is_ca: bool = False,
) -> x509.Certificate:
    """A certificate for ``key`` signed by ``ca_key`` (self-signed without one)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
    if expired:
        start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
    signing_key = ca_key or key
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(ca_name or common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    return builder.sign(signing_key, algorithm)


def _write_key(path: str, key: PrivateKey, password: bytes | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def _write_cert(path: str, cert: x509.Certificate) -> str:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(
    directory: str | os.PathLike[str], kind: str = "rsa", password: bytes | None = None
) -> PKI:
    """Write a CA, a trusted signer, a second trusted signer, an untrusted signer (same
    CA, not in the store) and an expired one into ``directory``."""
    root = os.fspath(directory)
    store_dir = os.path.join(root, "store")
    os.makedirs(store_dir, exist_ok=True)
    ca_key = _new_key(kind)
    ca = issue("polyq test CA", ca_key, is_ca=True, days=60)
    ca_path = _write_cert(os.path.join(root, "ca.pem"), ca)

    def signer(name: str, trusted: bool, expired: bool = False, pw: bytes | None = None) -> Signer:
        key = _new_key(kind)
        cert = issue(name, key, ca_key, "polyq test CA", expired=expired)
        key_path = _write_key(os.path.join(root, f"{name}.key"), key, pw)
        cert_path = _write_cert(os.path.join(store_dir if trusted else root, f"{name}.pem"), cert)
        return Signer(key_path, cert_path)

    main = signer("worker", True, pw=password)
    return PKI(
        key=main.key,
        cert=main.cert,
        store=os.path.join(store_dir, "*.pem"),
        ca_cert=ca_path,
        untrusted=signer("intruder", False),
        expired=signer("retired", True, expired=True),
        second=signer("client", True),
    )
