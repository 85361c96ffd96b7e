"""Settings with Celery's key names: defaults, environment, objects and modules."""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["DEFAULTS", "Settings", "default_sqlite_url"]

#: Every setting polyq understands, with its default. Names are Celery's.
DEFAULTS: dict[str, Any] = {
    # Where things live. ``None`` means the SQLite file ``polyq.sqlite3`` in the
    # working directory (or POLYQ_BROKER_URL / POLYQ_RESULT_BACKEND).
    "broker_url": None,
    "result_backend": None,
    "broker_transport_options": {},
    "result_backend_transport_options": {},
    "broker_connection_retry_on_startup": True,
    "broker_use_ssl": None,
    # Messages.
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": None,
    "task_compression": None,
    "task_protocol": 1,
    # Routing and calling.
    "task_default_queue": "celery",
    "task_default_priority": 0,
    "task_routes": None,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_store_eager_result": False,
    "task_publish_retry": True,
    "task_publish_retry_policy": {
        "max_retries": 3,
        "interval_start": 0.0,
        "interval_step": 0.2,
        "interval_max": 1.0,
    },
    "task_send_sent_event": False,
    # Execution.
    "task_acks_late": True,
    "task_acks_on_failure_or_timeout": True,
    "task_reject_on_worker_lost": True,
    "task_max_deliveries": 10,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_default_rate_limit": None,
    "task_ignore_result": False,
    "task_track_started": False,
    "task_annotations": None,
    "worker_deduplicate_successful_tasks": False,
    # Results.
    "result_expires": 86400,
    "result_extended": False,
    "result_exception_allowlist": [],
    # Secrets (issue 17): a failure's message and traceback often quote a broker URL
    # or a DSN; they are redacted before they are stored, dead-lettered or sent as
    # events. Off only to debug with the raw text.
    "result_redact_secrets": True,
    # Time.
    "timezone": "UTC",
    "enable_utc": True,
    # Worker.
    "worker_concurrency": None,
    "worker_prefetch_multiplier": 4,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_pool": "prefork",
    "worker_soft_shutdown_timeout": 0.0,
    "worker_hijack_root_logger": True,
    "worker_log_format": "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
    "worker_task_log_format": (
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
    ),
    "worker_send_task_events": False,
    "worker_redirect_stdouts": True,
    # Remote control (docs/workers.md "Remote control"): whether the worker listens on
    # the control channel, which commands it accepts from it, and the bounds of their
    # arguments (a command body is data from the broker, so every argument is checked).
    "worker_enable_remote_control": True,
    "worker_remote_control_commands": [
        "ping",
        "active",
        "reserved",
        "registered",
        "revoked",
        "active_queues",
        "stats",
        "revoke",
        "rate_limit",
        "time_limit",
        "shutdown",
        "pool_grow",
        "pool_shrink",
        "add_consumer",
        "cancel_consumer",
    ],
    "worker_remote_control_max_concurrency": None,  # None: max(16, 4 x CPUs)
    "worker_remote_control_min_time_limit": 1.0,
    "worker_remote_control_max_rate_interval": 3600.0,
    # Modules.
    "imports": [],
    "include": [],
    # Periodic tasks.
    "beat_schedule": {},
    "beat_lease_time": 10.0,
    "beat_missed_policy": "run_once",
    "beat_max_loop_interval": 5.0,
    "beat_key_prefix": "polyq-beat-",
    # The dashboard (`polyq monitor`): what it keeps in memory (Flower's max_tasks and
    # max_workers, Celery's max_tasks_in_memory / max_workers_in_memory), and the Host
    # names it answers besides the loopback ones (DNS rebinding; "*" allows any).
    "monitor_max_tasks": 10000,
    "monitor_max_workers": 5000,
    "monitor_max_task_names": 1000,
    "monitor_allowed_hosts": [],
    # Message signing (app.setup_security(), docs/security.md). Celery's names: paths of
    # the PEM private key and its certificate, a glob of the trusted certificates, the
    # digest, and the key's password.
    "security_key": None,
    "security_key_password": None,
    "security_certificate": None,
    "security_cert_store": None,
    "security_digest": "sha256",
    # polyq's own: the shared-key mode (HMAC-SHA256; a key, or a list whose first key
    # signs), or a file of keys one a line; and how old (seconds) a signed control
    # command or event may be before it is refused as a replay.
    "security_shared_key": None,
    "security_shared_key_file": None,
    "security_max_age": 300.0,
    # Errors and timeouts: how long connecting to the broker (and the
    # result backend) may take before BrokerError; also the longest a publish keeps
    # retrying under task_publish_retry_policy unless the policy has a "timeout".
    "broker_connection_timeout": 4.0,
}

#: Celery settings polyq deliberately does not have, and what to use instead.
NOT_SUPPORTED: dict[str, str] = {
    "broker_pool_limit": "each process keeps one broker connection per plugin; no pool to size",
    "worker_direct": "route to a worker's own queue with -Q instead",
    "task_create_missing_queues": "queues are always created on first use",
    "result_chord_join_timeout": "chords never join by polling in polyq",
    "worker_disable_rate_limits": "do not set rate_limit on the tasks",
    "event_queue_expires": "events use the broker's broadcast",
    "beat_scheduler": "polyq beat keeps its state in the result backend",
    "beat_schedule_filename": "polyq beat keeps its state in the result backend",
    "beat_sync_every": "polyq beat writes each entry's state after every run",
}

_ENV_PREFIX = "POLYQ_"
_FILE = "polyq.sqlite3"


def default_sqlite_url(directory: str | None = None) -> str:
    """The embedded default: ``sqlite:///<absolute path>/polyq.sqlite3``."""
    path = os.path.abspath(os.path.join(directory or os.getcwd(), _FILE))
    return f"sqlite:///{path}"


def _from_env(key: str, raw: str) -> Any:
    default = DEFAULTS[key]
    if isinstance(default, str) or (default is None and key.endswith(("url", "backend"))):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class Settings(MutableMapping[str, Any]):
    """``app.conf``: a mapping of settings that also reads as attributes.

    Lookup order: a value set in code (``update``, ``config_from_object``) wins;
    then an environment variable ``POLYQ_<KEY IN UPPER CASE>``; then the default.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._explicit: dict[str, Any] = {}
        self._environ = os.environ if environ is None else environ
        # Settings are read on every task call; the environment is read once per key.
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            pass
        if key in self._explicit:
            value = self._explicit[key]
        else:
            env_key = _ENV_PREFIX + key.upper()
            if env_key in self._environ and key in DEFAULTS:
                value = _from_env(key, self._environ[env_key])
            else:
                value = DEFAULTS[key]
        self._cache[key] = value
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in DEFAULTS:
            hint = NOT_SUPPORTED.get(key)
            warnings.warn(
                f"polyq has no setting {key!r}"
                + (f" ({hint})" if hint else "; see docs/configuration.md for the list"),
                stacklevel=3,
            )
        self._explicit[key] = value
        self._cache.pop(key, None)
        self.__dict__.pop(key, None)

    def __delitem__(self, key: str) -> None:
        del self._explicit[key]
        self._cache.pop(key, None)
        self.__dict__.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(DEFAULTS)

    def __len__(self) -> int:
        return len(DEFAULTS)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(f"no setting {key!r}") from None
        # Kept as an instance attribute (dropped again by a write), so the next
        # ``conf.<key>`` is a plain lookup: settings are read several times per task sent.
        self.__dict__[key] = value
        return value

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_"):
            object.__setattr__(self, key, value)
        else:
            self[key] = value

    def update_from(self, source: Mapping[str, Any], namespace: str | None = None) -> None:
        """Take settings from a mapping; with ``namespace='CELERY'`` only keys
        ``CELERY_<KEY>`` are read (Django style), lower-cased without the prefix."""
        prefix = f"{namespace}_" if namespace else None
        for key, value in source.items():
            if prefix:
                if not key.startswith(prefix):
                    continue
                key = key[len(prefix) :].lower()
            elif key.startswith("_") or not key.islower():
                continue
            self[key] = value

    def from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Take settings from an object or module (or its dotted name)."""
        if isinstance(obj, str):
            obj = importlib.import_module(obj)
        source = obj if isinstance(obj, Mapping) else {k: getattr(obj, k) for k in dir(obj)}
        self.update_from(source, namespace)

    def explicit(self) -> dict[str, Any]:
        """The settings set in code (not defaults or environment variables)."""
        return dict(self._explicit)

    def is_set(self, key: str) -> bool:
        """Whether ``key`` was set in code or the environment (not just defaulted)."""
        return key in self._explicit or (_ENV_PREFIX + key.upper()) in self._environ
