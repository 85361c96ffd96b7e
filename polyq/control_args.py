"""The arguments of remote-control commands: what each command accepts, checked the
same way by the client (:mod:`polyq.control`, before sending) and by every worker
(:mod:`polyq.worker.remote`, on receipt: a body published straight to the broker
skips the client).

A command body is data from the broker, so nothing in it is trusted: each argument
is checked for its type and range, and a bad one raises :class:`ControlArgumentError`
naming the argument, the allowed range and what was given. Checks that need the
worker's state (its pool size, its tasks, its queues) are the worker's; the ones
here need only the settings (:class:`Limits`).

Queue names
    The transport contract has no way to ask a broker which of its queues are its
    own bookkeeping, so :func:`reserved_queue` applies one documented rule that
    covers every built-in plugin (docs/workers.md, *Remote control*).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from polyq.exceptions import ConfigurationError

__all__ = [
    "ALL_COMMANDS",
    "MAX_NAME_LENGTH",
    "MAX_REVOKE_IDS",
    "READ_ONLY_COMMANDS",
    "ControlArgumentError",
    "Limits",
    "allowed_commands",
    "check",
    "check_envelope",
    "reserved_queue",
]

#: Commands that only read the worker's state.
READ_ONLY_COMMANDS: tuple[str, ...] = (
    "ping",
    "active",
    "reserved",
    "registered",
    "revoked",
    "active_queues",
    "stats",
)
#: Every command a worker knows (``worker_remote_control_commands`` defaults to all).
ALL_COMMANDS: tuple[str, ...] = (
    *READ_ONLY_COMMANDS,
    "revoke",
    "rate_limit",
    "time_limit",
    "shutdown",
    "pool_grow",
    "pool_shrink",
    "add_consumer",
    "cancel_consumer",
)
#: Most task ids one ``revoke`` broadcast may carry.
MAX_REVOKE_IDS = 10_000
#: Longest queue name, task id, task name or host name accepted (AMQP's limit is 255 bytes).
MAX_NAME_LENGTH = 255
#: The channel replies go to: ``polyq.reply.<ticket>`` (see :mod:`polyq.control`).
_REPLY_TO = re.compile(r"polyq\.reply\.[0-9A-Za-z_-]{1,64}")
#: How a broker names its own queues (see :func:`reserved_queue`).
_RESERVED_SUFFIXES = (".dlq", "-dlq", "-delay")
_RESERVED_PATTERNS = (re.compile(r"\.delay\.\d+$"),)
_RESERVED_PREFIXES = ("polyq.", "polyq-", "amq.")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class ControlArgumentError(ConfigurationError, ValueError):
    """A remote-control argument is missing, of the wrong type or out of range; the
    message names the command, the argument, the allowed range and the value given."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """The bounds set by the ``worker_remote_control_*`` settings."""

    #: Largest pool ``pool_grow`` may make; ``None``: not known here (see :meth:`ceiling`).
    max_concurrency: int | None = None
    #: Shortest soft or hard time limit ``time_limit`` accepts, in seconds.
    min_time_limit: float = 1.0
    #: Longest wait between two runs a ``rate_limit`` may impose, in seconds.
    max_rate_interval: float = 3600.0

    @classmethod
    def from_settings(cls, conf: Mapping[str, Any]) -> Limits:
        """The limits of ``conf`` (``app.conf``); a bad setting raises, naming it."""
        ceiling = conf["worker_remote_control_max_concurrency"]
        if ceiling is not None and (not _is_int(ceiling) or ceiling < 1):
            raise ConfigurationError(
                f"worker_remote_control_max_concurrency={ceiling!r}: give a whole number "
                "of processes of at least 1, or None for max(16, 4 x CPUs)"
            )
        minimum = conf["worker_remote_control_min_time_limit"]
        interval = conf["worker_remote_control_max_rate_interval"]
        for key, value in (
            ("worker_remote_control_min_time_limit", minimum),
            ("worker_remote_control_max_rate_interval", interval),
        ):
            if not _is_number(value) or not 0 < value < math.inf:
                raise ConfigurationError(f"{key}={value!r}: give a positive number of seconds")
        return cls(ceiling, float(minimum), float(interval))

    def ceiling(self) -> int:
        """Largest pool allowed: the setting, else ``max(16, 4 x CPUs)`` of this machine
        (only the worker, which runs on the machine concerned, calls this)."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        return max(16, 4 * (os.cpu_count() or 1))


def allowed_commands(setting: Any) -> frozenset[str]:
    """The command names ``worker_remote_control_commands`` allows: a list of names,
    or one string of names separated by commas (the environment variable's form)."""
    if setting is None:
        return frozenset(ALL_COMMANDS)
    if isinstance(setting, str):
        setting = [name.strip() for name in setting.split(",") if name.strip()]
    if not isinstance(setting, Iterable):
        raise ConfigurationError(
            f"worker_remote_control_commands={setting!r}: give a list of command names "
            f"from {', '.join(ALL_COMMANDS)}"
        )
    return frozenset(str(name) for name in setting)


def reserved_queue(name: str) -> str | None:
    """Why ``name`` is a broker's own queue that no worker may consume, or ``None``.

    The rule, for every broker (the contract cannot tell): dead letters (``<q>.dlq``
    on RabbitMQ, ``<q>-dlq`` on SQS), delay queues (``<q>.delay.NN`` on RabbitMQ,
    ``<q>-delay`` on SQS), polyq's own names (``polyq.`` and ``polyq-``: control,
    replies, events, broadcast queues) and RabbitMQ's reserved ``amq.`` prefix."""
    lowered = name.lower()
    for suffix in _RESERVED_SUFFIXES:
        if lowered.endswith(suffix):
            kind = "dead-letter" if "dlq" in suffix else "delay"
            return f"names ending in {suffix!r} are the brokers' {kind} queues"
    for pattern in _RESERVED_PATTERNS:
        if pattern.search(lowered):
            return "names ending in '.delay.<n>' are RabbitMQ's delay queues"
    for prefix in _RESERVED_PREFIXES:
        if lowered.startswith(prefix):
            owner = "RabbitMQ's" if prefix == "amq." else "polyq's own"
            return f"names starting with {prefix!r} are {owner} queues and channels"
    return None


# -- the checks -------------------------------------------------------------------------


def check(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """Check the arguments of ``command`` and return them normalized (defaults filled
    in, the command's own arguments only); raise :class:`ControlArgumentError`."""
    if not isinstance(arguments, Mapping):
        raise ControlArgumentError(f"{command}: arguments must be an object, got {arguments!r}")
    checker = _CHECKS.get(command)
    if checker is None:
        raise ControlArgumentError(
            f"unknown command {command!r}; known: {', '.join(sorted(ALL_COMMANDS))}"
        )
    return checker(command, arguments, limits)


def check_envelope(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Check the arguments every command may carry (``destination``, ``reply_to``,
    ``ticket``; see :mod:`polyq.control`) and return them normalized."""
    if not isinstance(arguments, Mapping):
        raise ControlArgumentError(f"arguments must be an object, got {type(arguments).__name__}")
    out: dict[str, Any] = {}
    destination = arguments.get("destination")
    if destination is not None:
        if isinstance(destination, str):
            destination = [destination]
        if not isinstance(destination, list | tuple) or not destination:
            raise ControlArgumentError(
                f"destination must be a non-empty list of worker names, got {destination!r}"
            )
        out["destination"] = [_name("", "destination", d) for d in destination]
    reply_to = arguments.get("reply_to")
    if reply_to is not None:
        if not isinstance(reply_to, str) or not _REPLY_TO.fullmatch(reply_to):
            raise ControlArgumentError(
                f"reply_to must be a reply channel 'polyq.reply.<ticket>', got {reply_to!r:.80}"
            )
        out["reply_to"] = reply_to
    ticket = arguments.get("ticket")
    if ticket is not None:
        if not isinstance(ticket, str) or len(ticket) > 64:
            raise ControlArgumentError("ticket must be a string of at most 64 characters")
        out["ticket"] = ticket
    return out


def _no_arguments(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    return {}


def _pool(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    n = arguments.get("n")
    if n is None:
        n = 1
    top = limits.max_concurrency
    if not _is_int(n) or n < 1 or (top is not None and n > top):
        bound = (
            f"from 1 to {top} (worker_remote_control_max_concurrency)" if top else "of 1 or more"
        )
        raise ControlArgumentError(
            f"{command}: n must be a whole number of pool slots {bound}, got {n!r:.40}"
        )
    return {"n": int(n)}


def _time_limit(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    out: dict[str, Any] = {"task_name": _name(command, "task_name", arguments.get("task_name"))}
    low = limits.min_time_limit
    for key in ("soft", "hard"):
        value = arguments.get(key)
        # None (or 0, as Celery's clients send it) removes the limit.
        if value is None or (_is_number(value) and value == 0):
            out[key] = None
            continue
        if not _is_number(value) or not low <= value < math.inf:
            raise ControlArgumentError(
                f"{command}: {key} must be a number of seconds of at least {low:g} "
                f"(worker_remote_control_min_time_limit), or None/0 for no limit; got {value!r}"
            )
        out[key] = float(value)
    if out["soft"] is not None and out["hard"] is not None and out["soft"] >= out["hard"]:
        raise ControlArgumentError(
            f"{command}: soft ({out['soft']:g}) must be below hard ({out['hard']:g}): the soft "
            "limit warns the task before the hard one kills it"
        )
    return out


def _rate_limit(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    name = _name(command, "task_name", arguments.get("task_name"))
    rate = arguments.get("rate_limit")
    if rate is None or rate in ("", "0", "none") or (_is_number(rate) and rate == 0):
        return {"task_name": name, "rate_limit": None, "per_second": None}
    longest = limits.max_rate_interval
    forms = "'<number>/s', '<number>/m', '<number>/h' or a number per second"
    per_second = _per_second(rate)
    if per_second is None:
        raise ControlArgumentError(
            f"{command}: bad rate limit {rate!r:.80}; write it as {forms}, or 0/None to remove it"
        )
    if not 0 < per_second < math.inf or 1.0 / per_second > longest:
        raise ControlArgumentError(
            f"{command}: rate_limit {rate!r:.80} is out of range: the rate must be positive and "
            f"at least one task per {longest:g} s (worker_remote_control_max_rate_interval)"
        )
    return {"task_name": name, "rate_limit": rate, "per_second": per_second}


def _queue(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    queue = _name(command, "queue", arguments.get("queue"))
    if command == "add_consumer":
        # Only when adding: a worker started on such a queue (-Q) may still drop it.
        why = reserved_queue(queue)
        if why is not None:
            raise ControlArgumentError(f"{command}: queue {queue!r} is refused: {why}")
    return {"queue": queue}


def _revoke(command: str, arguments: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    ids = arguments.get("ids")
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list | tuple) or not 1 <= len(ids) <= MAX_REVOKE_IDS:
        raise ControlArgumentError(
            f"{command}: ids must be a list of 1 to {MAX_REVOKE_IDS} task ids, got {_describe(ids)}"
        )
    checked = [_name(command, "each task id in ids", task_id) for task_id in ids]
    terminate = arguments.get("terminate", False)
    if not isinstance(terminate, bool):
        raise ControlArgumentError(f"{command}: terminate must be true or false, got {terminate!r}")
    return {"ids": checked, "terminate": terminate, "signal": _signal(command, arguments)}


def _signal(command: str, arguments: Mapping[str, Any]) -> str:
    value = arguments.get("signal")
    if value is None:
        return "SIGTERM"
    if _is_int(value):
        try:
            return signal.Signals(value).name
        except ValueError:
            pass
    elif isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if name in signal.Signals.__members__:
            return name
    raise ControlArgumentError(
        f"{command}: signal must name a signal of this system (SIGTERM, SIGKILL, SIGUSR1...), "
        f"got {value!r:.40}"
    )


_CHECKS: dict[str, Callable[[str, Mapping[str, Any], Limits], dict[str, Any]]] = {
    **dict.fromkeys(READ_ONLY_COMMANDS, _no_arguments),
    "shutdown": _no_arguments,
    "revoke": _revoke,
    "rate_limit": _rate_limit,
    "time_limit": _time_limit,
    "pool_grow": _pool,
    "pool_shrink": _pool,
    "add_consumer": _queue,
    "cancel_consumer": _queue,
}


# -- helpers ----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _describe(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return repr(value)[:80]


def _name(command: str, argument: str, value: Any) -> str:
    """A task, queue, task-id or host name: a non-empty string, printable, no spaces."""
    where = f"{command}: " if command else ""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise ControlArgumentError(
            f"{where}{argument} must be a name of 1 to {MAX_NAME_LENGTH} characters, "
            f"got {_describe(value)}"
        )
    for char in value:
        if char.isspace() or unicodedata.category(char).startswith("C"):
            raise ControlArgumentError(
                f"{where}{argument} {value!r:.80} is refused: it holds a space or control "
                f"character ({char!r})"
            )
    return value


def _per_second(rate: Any) -> float | None:
    """Tasks per second of a Celery rate (``10``, ``"10/s"``, ``"100/m"``), or None when
    it is not one."""
    if _is_number(rate):
        return float(rate)
    if not isinstance(rate, str):
        return None
    number, _, unit = rate.partition("/")
    if unit not in ("", *_UNITS):
        return None
    try:
        value = float(number)
    except ValueError:
        return None
    if math.isnan(value):
        return None
    return value / _UNITS[unit or "s"]
