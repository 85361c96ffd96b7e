"""Queue names: the check every queue name passes before a broker sees it.

A name with a control character or another unprintable character (newline, tab,
NUL, zero-width space, direction marks...) is refused on every broker: some brokers
refuse it late and slowly (a RabbitMQ publish to a queue named with a newline hung
28 s before failing), others fold it into another name, and a name nobody can type
or read in a log is a trap either way. Brokers add their own rules on top
(``polyq_transports.sqs``: SQS's charset; ``polyq_transports.sql``: names equal
under the database's collation), see docs/design/.
"""

from __future__ import annotations

import unicodedata

from polyq.exceptions import InvalidQueueName

__all__ = ["MAX_QUEUE_NAME_LENGTH", "check_queue_name", "check_queue_names"]

#: The longest queue name polyq accepts, in characters (RabbitMQ's limit is 255
#: bytes, the SQL transport's column 255 characters; SQS's 80 is checked there).
MAX_QUEUE_NAME_LENGTH = 255

#: Names that passed, so that publishing checks a name once per process.
_CHECKED: set[str] = set()
_CHECKED_MAX = 4096

_KINDS = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than ' '",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned character",
}


def check_queue_name(name: object) -> str:
    """Return ``name`` if it can name a queue on any broker, else raise
    :class:`~polyq.exceptions.InvalidQueueName` naming the queue, what is wrong
    and how to fix it."""
    if isinstance(name, str) and name in _CHECKED:  # the publish path: one set lookup
        return name
    if not isinstance(name, str):
        raise InvalidQueueName(
            f"a queue name must be a string, not {type(name).__name__} ({name!r}); "
            "pass the queue's name as text"
        )
    if not name:
        raise InvalidQueueName("a queue name cannot be empty; name the queue (e.g. 'celery')")
    if len(name) > MAX_QUEUE_NAME_LENGTH:
        raise InvalidQueueName(
            f"queue name {name[:40]!r}... is {len(name)} characters, above the "
            f"{MAX_QUEUE_NAME_LENGTH} polyq accepts; use a shorter name"
        )
    # str.isprintable() is False for control (Cc), format (Cf), separator (Zl, Zp,
    # Zs other than the ASCII space), surrogate, private-use and unassigned characters.
    for index, char in enumerate(name):
        if not char.isprintable():
            kind = _KINDS.get(unicodedata.category(char), "an unprintable character")
            label = unicodedata.name(char, "")
            what = f"U+{ord(char):04X}" + (f" {label}" if label else "")
            raise InvalidQueueName(
                f"queue name {name!r} contains {what} ({kind}, unprintable) at position "
                f"{index}; brokers refuse, hang on or fold such "
                "names. Use letters, digits and punctuation such as '-', '_', '.'"
            )
    if name != name.strip():
        raise InvalidQueueName(
            f"queue name {name!r} starts or ends with a space; MySQL and MariaDB "
            "ignore trailing spaces (so it would share messages with "
            f"{name.strip()!r}) and `-Q` strips them. Remove the spaces"
        )
    if len(_CHECKED) < _CHECKED_MAX:
        _CHECKED.add(name)
    return name


def check_queue_names(names: object) -> list[str]:
    """Every name of ``names`` checked by :func:`check_queue_name`, as a list."""
    if isinstance(names, str):
        return [check_queue_name(names)]
    if not isinstance(names, list | tuple | set | frozenset):
        raise InvalidQueueName(
            f"queues must be a list of names, not {type(names).__name__} ({names!r})"
        )
    return [check_queue_name(name) for name in names]
