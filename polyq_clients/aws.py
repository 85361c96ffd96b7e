"""AWS client code the SQS transport and the DynamoDB result backend share.

:func:`create_client` builds a boto3 client from a polyq URL and options (region,
endpoint override, credentials, retries, timeouts); :func:`call` runs one API call
and turns botocore's connection and credential errors into
:class:`~polyq.exceptions.BrokerError`; :func:`refused` does the same for an error
the service answered. Credentials are never printed: messages quote the URL through
:func:`polyq.url.redact` and never the options.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from polyq.exceptions import BrokerError, BrokerRefused, ConfigurationError
from polyq.url import is_loopback, redact, split_url, warn_insecure

__all__ = ["REFUSAL_CODES", "call", "create_client", "error_code", "refused", "session_args"]

#: Error codes of a final refusal: the credentials are wrong, expired or not allowed;
#: no retry can change the answer.
REFUSAL_CODES = frozenset(
    {
        "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
        "AccessDenied", "AccessDeniedException", "InvalidSecurity", "ExpiredToken",
        "ExpiredTokenException", "MissingAuthenticationToken", "IncompleteSignature",
        "AuthFailure", "InvalidAccessKeyId",
    }
)  # fmt: skip

logger = logging.getLogger(__name__)


def session_args(url: str, options: Mapping[str, Any], region: Any = None) -> dict[str, Any]:
    """The ``boto3.session.Session`` arguments for ``url`` and ``options``: keys in the
    URL's user info (Celery's spelling) or the ``aws_*`` options, ``profile_name`` and
    ``region``; anything unset is left to boto3's usual chain."""
    parts = split_url(url)  # a secret key holds "/" and "+" as typed
    args: dict[str, Any] = {}
    if parts.username:
        args["aws_access_key_id"] = parts.username
        args["aws_secret_access_key"] = parts.password or ""
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        if options.get(key):
            args[key] = str(options[key])
    if options.get("profile_name"):
        args["profile_name"] = str(options["profile_name"])
    if region:
        args["region_name"] = str(region)
    return args


def create_client(
    service: str,
    url: str,
    options: Mapping[str, Any],
    *,
    region: Any,
    endpoint: Any,
    read_timeout: float,
    label: str,
) -> Any:
    """A boto3 client of ``service`` (``"sqs"``, ``"dynamodb"``) in a session of its
    own, with the ``connect_timeout``, ``read_timeout`` (default ``read_timeout``) and
    ``max_attempts`` options (botocore's standard retries); ``endpoint`` overrides the
    service's (emulators, VPC endpoints). ``label`` names the service in errors."""
    config = botocore.config.Config(
        # The app passes broker_connection_timeout (4 s by default) as connect_timeout.
        connect_timeout=float(options.get("connect_timeout", 4)),
        read_timeout=float(options.get("read_timeout", read_timeout)),
        # botocore's standard-mode default: its backoff (up to 1 s, then 2 s) keeps an
        # unreachable endpoint's error within about broker_connection_timeout.
        retries={"max_attempts": int(options.get("max_attempts", 3)), "mode": "standard"},
    )
    if endpoint and str(endpoint).lower().startswith("http://"):
        host = urlsplit(str(endpoint)).hostname
        if not is_loopback(host):
            warn_insecure(
                logger,
                str(endpoint),
                f"the {label} endpoint is plain HTTP: requests, signed but not encrypted, "
                "and their answers can be read on the network path",
                "Use an https:// endpoint_url (AWS's own endpoints are HTTPS by default).",
            )
    try:
        # A session per instance: boto3's default session is shared global state.
        return boto3.session.Session(**session_args(url, options, region)).client(
            service, endpoint_url=str(endpoint) if endpoint else None, config=config
        )
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ConfigurationError(f"{redact(url)}: cannot set up the {label} client: {exc}") from exc


def call(
    client: Any, operation: str, params: Mapping[str, Any], label: str, where: Callable[[], str]
) -> Any:
    """``client.<operation>(**params)``; a missing credential or a connection failure
    becomes :class:`BrokerError` naming ``label`` at ``where()``. An error the service
    answered (``ClientError``) is raised as is, for the caller to judge."""
    try:
        return getattr(client, operation)(**params)
    except botocore.exceptions.ClientError:
        raise
    except botocore.exceptions.NoCredentialsError as exc:
        raise BrokerRefused(
            f"{label} at {where()}: no AWS credentials found; set them in the "
            "environment, a profile or an instance role (boto3's usual chain)"
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise BrokerError(f"{label} at {where()}: {operation} failed: {exc}") from exc


def error_code(exc: botocore.exceptions.ClientError) -> str:
    """The service's error code (``""`` if it gave none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def refused(
    label: str, where: str, operation: str, exc: botocore.exceptions.ClientError
) -> BrokerError:
    """The :class:`BrokerError` for ``operation`` refused by the service (code and
    message); :class:`BrokerRefused` when the credentials were refused."""
    code = exc.response.get("Error", {}).get("Code", "?")
    message = exc.response.get("Error", {}).get("Message", "")
    if code in REFUSAL_CODES:
        return BrokerRefused(
            f"{label} at {where}: {operation} refused ({code}): {message}. Check the AWS "
            "credentials (URL, aws_* options, profile or role) and their permissions."
        )
    return BrokerError(f"{label} at {where}: {operation} refused ({code}): {message}")
