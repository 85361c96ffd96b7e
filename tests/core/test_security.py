"""Message signing (polyq.security, app.setup_security): the wire form, what it refuses,
the errors of a wrong setup, and a worker (memory broker) that runs only signed tasks.

Keys and certificates are made per test module in a temporary directory
(polyq.testing.pki); none is committed. The same checks over every broker are in
tests/conformance/e2e/test_signing.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polyq import Polyq, security
from polyq.exceptions import ConfigurationError, SecurityError
from polyq.message import TaskMessage, decode, encode
from polyq.security import KIND_CONTROL, KIND_EVENT, keys
from polyq.serialization import AUTH_CONTENT_TYPE
from polyq.testing.pki import PKI, make_pki
from polyq.testing.worker import start_worker
from polyq.transport import Delivery, OutgoingMessage


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), password=b"s3cret pass")


def _sec(pki: PKI, key: str | None = None, cert: str | None = None, **kw: Any) -> security.Security:
    return security.build(
        key=key or pki.key,
        key_password=b"s3cret pass" if key is None else None,
        cert=cert or pki.cert,
        store=pki.store,
        **kw,
    )


def _delivery(out: OutgoingMessage) -> Delivery:
    return Delivery(out.queue, out.message_id, out.body, dict(out.headers), 1)


def _signed(sec: security.Security, **fields: Any) -> OutgoingMessage:
    msg = TaskMessage(task="proj.add", args=[2, 2], eta=time.time() + 60, retries=1, **fields)
    return sec.signer.sign_task(encode(msg, "json"))


# -- the wire form -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_signed_message_verifies_and_decodes(tmp_path: Path, kind: str) -> None:
    keys = make_pki(tmp_path, kind=kind)
    sec = security.build(key=keys.key, cert=keys.cert, store=keys.store)
    out = _signed(sec, headers={"trace": "abc"})
    assert out.headers["content-type"] == AUTH_CONTENT_TYPE
    verified = sec.verifier.verify_task(_delivery(out))
    message = decode(verified, sec.accept)
    assert (message.task, message.args, message.retries) == ("proj.add", [2, 2], 1)
    assert message.headers == {"trace": "abc"}


def test_every_header_and_the_body_are_covered(pki: PKI) -> None:
    sec = _sec(pki)
    out = _signed(sec, headers={"trace": "abc"})
    meta = json.loads(out.headers["signature"])
    assert set(meta["headers"]) == set(out.headers) - {"signature"}
    assert meta["signer"] == keys.fingerprint(keys.load_certificate(pki.cert))
    for name in [n for n in out.headers if n != "signature"]:
        tampered = _delivery(out)
        tampered.headers[name] = tampered.headers[name] + "x"
        with pytest.raises(SecurityError, match=r"bad signature|unsigned"):
            sec.verifier.verify_task(tampered)
    tampered = _delivery(out)
    tampered.body = b'{"args":["pwned"],"kwargs":{}}'
    with pytest.raises(SecurityError, match="bad signature"):
        sec.verifier.verify_task(tampered)


def test_an_envelope_header_added_after_signing_is_refused(pki: PKI) -> None:
    sec = _sec(pki)
    out = sec.signer.sign_task(encode(TaskMessage(task="proj.add"), "json"))
    for name, value in (("time_limit", "0.001"), ("expires", "2000-01-01T00:00:00+00:00")):
        tampered = _delivery(out)
        tampered.headers[name] = value
        with pytest.raises(SecurityError, match="added after signing"):
            sec.verifier.verify_task(tampered)
    # A header a transport adds (not the envelope's) is dropped, never handed on.
    extra = _delivery(out)
    extra.headers["x-polyq-deliveries"] = "3"
    assert "x-polyq-deliveries" not in sec.verifier.verify_task(extra).headers


def test_untrusted_expired_and_unsigned_are_refused(pki: PKI) -> None:
    sec = _sec(pki)
    intruder = _sec(pki, key=pki.untrusted.key, cert=pki.untrusted.cert)
    with pytest.raises(SecurityError, match="untrusted certificate"):
        sec.verifier.verify_task(_delivery(_signed(intruder)))
    # An expired certificate cannot sign (setup refuses it)...
    with pytest.raises(ConfigurationError, match="expired"):
        _sec(pki, key=pki.expired.key, cert=pki.expired.cert)
    # ...and what it signed before expiring is refused as expired.
    retired = keys.CertificateKey.__new__(keys.CertificateKey)
    cert = keys.load_certificate(pki.expired.cert)
    retired.key = keys.load_private_key(pki.expired.key)
    retired.cert, retired.hash = cert, keys.digest_algorithm("sha256")
    retired.alg, retired.identity = "x509-sha256", keys.fingerprint(cert)
    old = security.Signer(retired).sign_task(encode(TaskMessage(task="proj.add"), "json"))
    with pytest.raises(SecurityError, match="expired on"):
        sec.verifier.verify_task(_delivery(old))
    with pytest.raises(SecurityError, match="unsigned message"):
        sec.verifier.verify_task(_delivery(encode(TaskMessage(task="proj.add"), "json")))


def test_key_rotation_every_certificate_in_the_store_is_trusted(pki: PKI) -> None:
    worker = _sec(pki)
    client = _sec(pki, key=pki.second.key, cert=pki.second.cert)
    assert worker.verifier.verify_task(_delivery(_signed(client))).headers["task"] == "proj.add"


def test_the_verifier_chooses_the_algorithm_not_the_message(pki: PKI) -> None:
    sha256, sha512 = _sec(pki), _sec(pki, digest="sha512")
    with pytest.raises(SecurityError, match="x509-sha512"):
        sha256.verifier.verify_task(_delivery(_signed(sha512)))
    hmac_side = security.build(shared_key="k" * 32)
    with pytest.raises(SecurityError, match="hmac-sha256"):
        sha256.verifier.verify_task(_delivery(_signed(hmac_side)))


def test_broadcasts_signed_by_kind_and_fresh_only(pki: PKI) -> None:
    sec = _sec(pki)
    body = json.dumps({"command": "shutdown", "arguments": {}}).encode()
    signed = sec.signer.sign_broadcast(KIND_CONTROL, body)
    assert sec.verifier.verify_broadcast(KIND_CONTROL, signed) == body
    with pytest.raises(SecurityError, match="unsigned control"):
        sec.verifier.verify_broadcast(KIND_CONTROL, body)
    with pytest.raises(SecurityError, match="bad signature"):  # an event is not a command
        sec.verifier.verify_broadcast(KIND_EVENT, signed)
    with pytest.raises(SecurityError, match="bad signature"):
        sec.verifier.verify_broadcast(KIND_CONTROL, signed.replace(b"shutdown", b"pool_grow"))
    stale = security.Verifier(sec.verifier.trust, max_age=0.0)
    time.sleep(0.01)
    with pytest.raises(SecurityError, match="security_max_age"):
        stale.verify_broadcast(KIND_CONTROL, signed)


def test_shared_key_mode(tmp_path: Path) -> None:
    sec = security.build(shared_key=["new-key-" * 4, "old-key-" * 4])
    old = security.build(shared_key="old-key-" * 4)
    other = security.build(shared_key="another-" * 4)
    out = _signed(old)
    assert sec.verifier.verify_task(_delivery(out)).headers["task"] == "proj.add"
    with pytest.raises(SecurityError, match="unknown shared key"):
        sec.verifier.verify_task(_delivery(_signed(other)))
    tampered = _delivery(_signed(sec))
    tampered.headers["task"] = "proj.other"
    with pytest.raises(SecurityError, match="bad signature"):
        sec.verifier.verify_task(tampered)
    key_file = tmp_path / "keys"
    key_file.write_text("old-key-" * 4 + "\n")
    from_file = security.build(shared_key_file=str(key_file))
    assert from_file.verifier.verify_task(_delivery(out))
    assert "old-key" not in json.dumps(out.headers)  # the key never travels


# -- setup errors name the setting and the fix --------------------------------------


def test_setup_errors_name_the_file_and_the_fix(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"security_key.*missing\.pem.*readable file"):
        security.build(key=str(tmp_path / "missing.pem"), cert=pki.cert, store=pki.store)
    with pytest.raises(ConfigurationError, match="password"):
        security.build(key=pki.key, cert=pki.cert, store=pki.store)  # encrypted, no password
    with pytest.raises(ConfigurationError, match="does not belong to security_certificate"):
        security.build(key=pki.untrusted.key, cert=pki.second.cert, store=pki.store)
    with pytest.raises(ConfigurationError, match="matches no file"):
        security.build(
            key=pki.second.key, cert=pki.second.cert, store=str(tmp_path / "none" / "*.pem")
        )
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    with pytest.raises(ConfigurationError, match="no PEM certificate"):
        security.build(key=pki.second.key, cert=str(not_pem), store=pki.store)
    with pytest.raises(ConfigurationError, match="needs security_key, security_certificate"):
        security.build()
    with pytest.raises(ConfigurationError, match="too weak"):
        security.build(key=pki.second.key, cert=pki.second.cert, store=pki.store, digest="sha1")
    with pytest.raises(ConfigurationError, match="fewer than 16 bytes"):
        security.build(shared_key="short")


def test_setup_security_refuses_an_accept_content_that_lets_unsigned_in(pki: PKI) -> None:
    app = Polyq("t", broker="memory://", backend="memory://", accept_content=["auth", "json"])
    with pytest.raises(ConfigurationError, match="accept_content"):
        app.setup_security(key=pki.second.key, cert=pki.second.cert, store=pki.store)


def test_celery_settings_alone_set_it_up(pki: PKI) -> None:
    app = Polyq(
        "t",
        broker="memory://",
        backend="memory://",
        security_key=pki.second.key,
        security_certificate=pki.second.cert,
        security_cert_store=pki.store,
        task_serializer="auth",
        accept_content=["auth"],
    )
    assert app.security is not None and app.security.mode == "x509"
    assert app.accept == {AUTH_CONTENT_TYPE}
    assert app.result_accept == {"application/json"}  # results are not signed


# -- a worker with signing on (memory broker) ---------------------------------------


@pytest.fixture
def signed_app(pki: PKI) -> Iterator[Polyq]:
    name = f"memory://sign-{uuid.uuid4().hex[:8]}"
    app = Polyq("signed", broker=name, backend=name)
    app.conf.update(
        security_key=pki.key,
        security_key_password=b"s3cret pass",
        security_certificate=pki.cert,
        security_cert_store=pki.store,
        security_digest="sha256",
        task_serializer="auth",
        accept_content=["auth"],
    )
    app.setup_security()

    @app.task(name="t.add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="t.echo")
    def echo(value: Any) -> Any:
        return value

    yield app
    app.close()


def _dead(app: Polyq, n: int) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = {d.message_id: d.reason for d in app.transport.dead_letters("celery")}
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} dead letters: {found}")


def test_forged_message_does_not_overwrite_a_result(signed_app: Polyq, pki: PKI) -> None:
    """The finding of issue 17: a forged message reusing a task's id replaced its
    stored result (4 -> 'pwned'). With signing on it is dead-lettered, never run."""
    app = signed_app
    intruder = _sec(pki, key=pki.untrusted.key, cert=pki.untrusted.cert)
    with start_worker(app) as worker:
        result = app.tasks["t.add"].delay(2, 2)
        assert result.get(timeout=10) == 4

        def forged() -> TaskMessage:  # a new message id each
            return TaskMessage(task="t.echo", id=result.id, args=["pwned"])

        unsigned = encode(forged(), "json")
        untrusted = intruder.signer.sign_task(encode(forged(), "json"))
        app.transport.publish([unsigned, untrusted])
        reasons = _dead(app, 2)
        assert "unsigned message refused" in reasons[unsigned.message_id]
        assert "signature refused: signed by an untrusted" in reasons[untrusted.message_id]
        assert app.AsyncResult(result.id).get(timeout=5) == 4
        assert app.tasks["t.add"].delay(20, 22).get(timeout=10) == 42
        assert not worker.stopped.is_set()


def test_forged_control_shutdown_and_events_are_refused(
    signed_app: Polyq, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    from polyq.control import CONTROL_CHANNEL
    from polyq.events import EVENT_CHANNEL, EventReceiver

    app = signed_app
    intruder = _sec(pki, key=pki.untrusted.key, cert=pki.untrusted.cert)
    command = json.dumps({"command": "shutdown", "arguments": {}}).encode()
    with start_worker(app) as worker, EventReceiver(app) as receiver:
        caplog.set_level(logging.WARNING, "polyq.worker")
        app.transport.broadcast(CONTROL_CHANNEL, command)
        app.transport.broadcast(CONTROL_CHANNEL, intruder.signer.sign_broadcast("control", command))
        app.transport.broadcast(EVENT_CHANNEL, b'[{"type": "worker-offline", "hostname": "x"}]')
        assert app.control.ping(timeout=2)  # signed: answered, after the forged ones
        assert not worker.stopped.is_set()
        refused = [r for r in caplog.records if "refused a control message" in r.getMessage()]
        assert len(refused) == 2
        assert not [e for e in receiver.events(timeout=0.5) if e.get("hostname") == "x"]
        assert receiver.refused == 1
        assert app.tasks["t.add"].delay(1, 1).get(timeout=10) == 2


def test_a_worker_with_a_wrong_key_path_fails_at_start(pki: PKI, tmp_path: Path) -> None:
    app = Polyq(
        "t",
        broker="memory://",
        backend="memory://",
        security_key=str(tmp_path / "nope.key"),
        security_certificate=pki.cert,
        security_cert_store=pki.store,
        accept_content=["auth"],
    )
    with pytest.raises(ConfigurationError, match=r"security_key: cannot read .*nope\.key"):
        app.Worker(pool="threads", concurrency=1)


def test_retries_and_chains_are_signed_by_the_worker(signed_app: Polyq) -> None:
    """What a worker sends itself (a retry, a chain's next step) is signed with its key
    and passes its own verification."""
    app = signed_app
    tries: list[int] = []

    @app.task(name="t.flaky", bind=True, max_retries=2, default_retry_delay=0)
    def flaky(self: Any, x: int) -> int:
        tries.append(x)
        if len(tries) < 2:
            raise self.retry()
        return x

    with start_worker(app):
        assert flaky.delay(7).get(timeout=10) == 7
        workflow = app.tasks["t.add"].s(1, 2) | app.tasks["t.add"].s(10)
        assert workflow.delay().get(timeout=10) == 13
    assert tries == [7, 7]
    assert app.transport.dead_letters("celery") == []


def test_signed_events_reach_the_monitor(signed_app: Polyq) -> None:
    from polyq.events import EventReceiver

    app = signed_app
    with EventReceiver(app) as receiver, start_worker(app, send_events=True):
        result = app.tasks["t.add"].delay(3, 3)
        assert result.get(timeout=10) == 6
        seen = set()
        deadline = time.monotonic() + 10
        for event in receiver.events(timeout=10):
            if event.get("uuid") == result.id:
                seen.add(event["type"])
                if event["type"] == "task-received":  # a signed body is still shown
                    assert event["args"] == "[3, 3]"
            if "task-succeeded" in seen or time.monotonic() > deadline:
                break
    assert {"task-received", "task-succeeded"} <= seen
    assert receiver.refused == 0


def test_a_worker_without_signing_says_why_it_refuses_a_signed_message(pki: PKI) -> None:
    name = f"memory://plain-{uuid.uuid4().hex[:8]}"
    plain = Polyq("plain", broker=name, backend=name)
    plain.task(name="t.add")(lambda a, b: a + b)
    signer = security.build(shared_key="k" * 32)
    out = signer.signer.sign_task(encode(TaskMessage(task="t.add", args=[1, 2]), "json"))
    with start_worker(plain):
        plain.transport.publish([out])
        reason = _dead(plain, 1)[out.message_id]
    assert "call app.setup_security() on this worker too" in reason


def test_celery_security_settings_are_known() -> None:
    """polyq used to warn that every security_* setting was unknown (and ignore it)."""
    import warnings

    app = Polyq("t", broker="memory://", backend="memory://")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.conf.update(
            security_key="k.pem",
            security_key_password=b"pw",
            security_certificate="c.pem",
            security_cert_store="certs/*.pem",
            security_digest="sha256",
        )


def test_a_forged_expired_message_cannot_mark_a_task_revoked(signed_app: Polyq, pki: PKI) -> None:
    """The consumer settles an expired message itself (stores REVOKED for its id); with
    signing on it verifies first, so a forged one cannot revoke another task's id."""
    app = signed_app
    intruder = _sec(pki, key=pki.untrusted.key, cert=pki.untrusted.cert)
    victim, genuine = str(uuid.uuid4()), str(uuid.uuid4())

    def expired(task_id: str) -> TaskMessage:
        return TaskMessage(task="t.add", id=task_id, args=[1, 1], expires=time.time() - 60)

    unsigned = encode(expired(victim), "json")
    forged = intruder.signer.sign_task(encode(expired(victim), "json"))
    assert app.security is not None
    signed = app.security.signer.sign_task(encode(expired(genuine), "json"))
    with start_worker(app):
        app.transport.publish([unsigned, forged, signed])
        reasons = _dead(app, 2)
        deadline = time.monotonic() + 10
        while app.AsyncResult(genuine).state != "REVOKED" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "unsigned message refused" in reasons[unsigned.message_id]
    assert "untrusted certificate" in reasons[forged.message_id]
    assert app.AsyncResult(victim).state == "PENDING"
    assert app.AsyncResult(genuine).state == "REVOKED"
