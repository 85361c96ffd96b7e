"""The workflow fields a worker reads from a message (``chord``, ``chain``,
``link``, ``link_error``, ``once``) and from a chord's stored record, checked for
type and range before anything acts on them.

A message is data from the broker, not from this process: a field of the wrong
type (``chord.size = "lots"``) used to raise after the task body ran, so the
message was redelivered and the body ran again, up to the delivery limit. Checked
first, a bad field fails the task once, naming the field (see
:func:`polyq.execution.execute`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polyq.exceptions import ChordError

if TYPE_CHECKING:
    from polyq.backend import ResultBackend

__all__ = [
    "MAX_CHORD_SIZE",
    "MAX_DEPTH",
    "check_chord_record",
    "check_chord_size",
    "check_options",
    "check_signature",
]

#: The largest chord size a message may carry; far above what any backend stores.
MAX_CHORD_SIZE = 10_000_000
#: How deep signatures may nest in a message (chains of chords of chains...).
MAX_DEPTH = 64
#: Longest id (task, chord) accepted from a message.
MAX_ID = 255


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_id(value: Any, field: str) -> str | None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        return f"{field} is {_kind(value)}: must be a non-empty string of at most {MAX_ID}"
    return None


def _check_int(value: Any, field: str, low: int, high: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{field} is {_kind(value)}: must be an integer from {low} to {high}"
    return None


def _check_chord(info: Any, field: str) -> str | None:
    if not isinstance(info, dict):
        return f"{field} is {_kind(info)}: must be a mapping with 'id' and 'size'"
    return _check_id(info.get("id"), f"{field}.id") or _check_int(
        info.get("size"), f"{field}.size", 1, MAX_CHORD_SIZE
    )


def _check_signature(value: Any, field: str, depth: int) -> str | None:
    """The first problem of a signature dict, or ``None``."""
    if depth > MAX_DEPTH:
        return f"{field} nests signatures deeper than {MAX_DEPTH}"
    if not isinstance(value, dict):
        return f"{field} is {_kind(value)}: must be a signature (a mapping)"
    task = value.get("task")
    if not isinstance(task, str) or not task:
        return f"{field}.task is {_kind(task)}: must be a task name"
    checks: list[tuple[Any, str, type | tuple[type, ...]]] = [
        (value.get("args", []), "args", (list, tuple)),
        (value.get("kwargs", {}), "kwargs", dict),
        (value.get("options", {}), "options", dict),
    ]
    for item, name, expected in checks:
        if item is not None and not isinstance(item, expected):
            return f"{field}.{name} is {_kind(item)}: must be a {_names(expected)}"
    options = value.get("options") or {}
    problem = _check_option_fields(options, f"{field}.options", depth + 1)
    if problem:
        return problem
    kwargs = value.get("kwargs") or {}
    kind = value.get("subtask_type")
    if kind in ("chain", "group"):
        steps = value.get("tasks", kwargs.get("tasks"))
        return _check_list(steps or [], f"{field}.tasks", depth + 1)
    if kind == "chord":
        header = value.get("header", kwargs.get("header"))
        problem = _check_signature(header, f"{field}.header", depth + 1)
        body = value.get("body", kwargs.get("body"))
        if problem is None and body is not None:
            problem = _check_signature(body, f"{field}.body", depth + 1)
        return problem
    return None


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _check_list(value: Any, field: str, depth: int) -> str | None:
    if not isinstance(value, list | tuple):
        return f"{field} is {_kind(value)}: must be a list of signatures"
    for index, item in enumerate(value):
        problem = _check_signature(item, f"{field}[{index}]", depth)
        if problem:
            return problem
    return None


def _check_option_fields(options: dict[str, Any], field: str, depth: int) -> str | None:
    for key in ("chord", "chain", "link", "link_error", "once"):
        value = options.get(key)
        if value is None:
            continue
        where = f"{field}.{key}"
        if key == "chord":
            problem = _check_chord(value, where)
        elif key == "chain":
            problem = _check_list(value, where, depth)
        elif key == "once":
            problem = (
                None
                if isinstance(value, bool)
                else f"{where} is {_kind(value)}: must be true or false"
            )
        else:
            problem = _check_links(value, where, depth)
        if problem:
            return problem
    return None


def _check_links(value: Any, field: str, depth: int) -> str | None:
    if isinstance(value, list | tuple):
        return _check_list(value, field, depth)
    return _check_signature(value, field, depth)


def check_options(options: Any) -> dict[str, str]:
    """The problems of a message's workflow options, by top-level key
    (``{"chord": "options.chord.size is 'lots' (str): must be an integer..."}``);
    empty when every field is usable."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        return {"": f"options is {_kind(options)}: must be a mapping"}
    problems: dict[str, str] = {}
    for key in ("chord", "chain", "link", "link_error", "once"):
        if options.get(key) is not None:
            problem = _check_option_fields({key: options[key]}, "options", 0)
            if problem:
                problems[key] = problem
    return problems


def check_signature(value: Any, field: str) -> str | None:
    """The first problem of the signature dict ``value`` (named ``field`` in the
    message), or ``None`` when it can be rebuilt and sent."""
    return _check_signature(value, field, 0)


def check_chord_record(record: Any, group_id: str, size: int) -> str | None:
    """The first problem of chord ``group_id``'s stored record (its body signature
    and the ids of its ``size`` header tasks), or ``None``."""
    field = f"chord {group_id} record"
    if not isinstance(record, dict):
        return f"{field} is {_kind(record)}: must be a mapping"
    results = record.get("results")
    if not isinstance(results, list) or len(results) != size:
        count = len(results) if isinstance(results, list) else _kind(results)
        return f"{field}.results has {count} ids: must be a list of the chord's {size} task ids"
    for index, task_id in enumerate(results):
        problem = _check_id(task_id, f"{field}.results[{index}]")
        if problem:
            return problem
    return _check_signature(record.get("body"), f"{field}.body", 0)


def check_chord_size(backend: ResultBackend, size: int) -> None:
    """Refuse, before anything is stored or sent, a chord of ``size`` header tasks
    above the result backend's declared ``max_chord_size`` (it could never fire)."""
    limit = backend.capabilities.max_chord_size
    if limit is not None and size > limit:
        raise ChordError(
            f"a chord of {size:,} header tasks is above the {limit:,} the result backend "
            f"{backend.describe()} declares (max_chord_size): it could never fire. Nothing "
            "was sent. Split the header into chords of at most that many tasks, or use a "
            "Redis or SQL result backend"
        )
