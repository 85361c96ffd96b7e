"""``app.setup_security()``: message signing from Celery's settings (or arguments),
and the settings it requires (``task_serializer='auth'``, ``accept_content=['auth']``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polyq import security
from polyq.config import Settings
from polyq.exceptions import ConfigurationError
from polyq.serialization import AUTH

__all__ = ["setup_security"]


def setup_security(
    conf: Settings,
    allowed_serializers: Sequence[str] | None = None,
    key: str | None = None,
    key_password: str | bytes | None = None,
    cert: str | None = None,
    store: str | None = None,
    digest: str | None = None,
    serializer: str = "json",
    shared_key: Any = None,
) -> security.Security:
    """Load the signing keys and trusted certificates and make ``conf`` require signed
    messages.

    Arguments default to the settings ``security_key``, ``security_key_password``,
    ``security_certificate``, ``security_cert_store``, ``security_digest`` (or
    ``security_shared_key``/``security_shared_key_file`` for the shared-key mode).
    ``serializer`` encodes bodies inside signed messages; ``allowed_serializers``
    (default: ``serializer``) are those a verified body may use. Sets
    ``task_serializer='auth'`` and ``accept_content=['auth']``; raises
    :class:`ConfigurationError` if they were set to anything else (a worker that also
    accepted ``json`` would run unsigned messages).
    """
    for name, wanted in (("task_serializer", AUTH), ("accept_content", [AUTH])):
        value = conf[name]
        if conf.is_set(name) and value not in (AUTH, [AUTH], (AUTH,)):
            raise ConfigurationError(
                f"setup_security() needs {name}={wanted!r} (only signed messages), but it "
                f"is {value!r}; set it to {wanted!r} or leave it unset"
            )
    built = security.build(
        key=key or conf.security_key,
        key_password=key_password or conf.security_key_password,
        cert=cert or conf.security_certificate,
        store=store or conf.security_cert_store,
        digest=digest or conf.security_digest,
        shared_key=shared_key if shared_key is not None else conf.security_shared_key,
        shared_key_file=conf.security_shared_key_file,
        serializer=serializer,
        allowed_serializers=allowed_serializers,
        max_age=conf.security_max_age,
    )
    conf["task_serializer"] = AUTH
    conf["accept_content"] = [AUTH]
    return built
