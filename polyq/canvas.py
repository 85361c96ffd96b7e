"""Signatures and workflows: ``signature``, ``chain``, ``group``, ``chord``,
``chunks``, ``xmap`` and ``xstarmap``, with ``link`` / ``link_error`` callbacks.

Data model
----------
A signature is a plain ``dict`` (``task``, ``args``, ``kwargs``, ``options``,
``immutable``, ``subtask_type``), so it travels inside a message as data and
:func:`from_dict` rebuilds the right class on the other side. Composites keep
their parts in the same dict: ``tasks`` (chain, group), ``header`` and ``body``
(chord). Nothing here is a task of its own: a workflow costs exactly the tasks
the user wrote, plus three optional built-ins (``polyq.map``, ``polyq.starmap``
and the groups ``chunks`` expands to).

Ids are assigned up front (:meth:`Signature.freeze`): the result handle of a
chain, group or chord exists before anything runs, and every later step is sent
under the id the caller is already waiting on.

How each primitive runs (no task ever polls)
--------------------------------------------
- **chain**: the first step is sent with the rest of the chain, reversed, in
  its message's ``options["chain"]``. When a step succeeds, the worker (through
  :func:`on_success`) sends the next one with the result prepended to its args.
  When a step fails, :func:`on_failure` stores FAILURE (the same exception type
  and message) under the id of every step that will now never run, so waiting
  on the chain raises instead of hanging. A group followed by more steps
  becomes a chord at that point.
- **group**: every member is sent at once; the :class:`~polyq.result.GroupResult`
  is saved so ``GroupResult.restore(id)`` works.
- **chord**: the body (already frozen) and the ordered ids of the header results
  are stored under ``polyq-chord-<group id>``; each header member carries
  ``options["chord"] = {"id", "size"}`` on its *last* task (a chain member
  counts when its last task succeeds). See below.

Chords: exactly once, never hung
--------------------------------
A header task succeeds → the worker has *already stored its result* → it adds
its own task id to the backend set ``polyq-chord-members-<id>``
(:meth:`~polyq.backend.ResultBackend.add_to_set`, distinct members). Whoever sees
the size reach the header size reads every header result (one ``get_many``),
publishes the body with its frozen, deterministic id and the message option
``once``, then writes ``polyq-chord-fired-<id>``.

- *Counting twice*: a header redelivered after storing its result adds the same
  id again, which does not grow the set.
- *Dying between the last member and the publish*: the last member's message is
  acked only after :func:`on_success` returns, so it is delivered again, runs,
  sees the full set and no ``fired`` mark, and publishes. Publish failures raise
  out of the worker's execution, which requeues the message: same path.
- *Publishing twice* (died after the publish but before the mark, or two
  redeliveries racing): every message sent with ``once`` is claimed by the
  worker before it runs (:func:`claim_once`): ``set_if_absent(polyq-once-<task
  id>, <message id>)``. The first published copy wins; a later copy has another
  message id and is acked without running. A redelivery of the winning message
  keeps its message id and runs again, as any task does (at-least-once), and so
  does a ``retry()`` of it.

(This needs the default late acknowledgement: a header task with
``acks_late=False`` is acked before it runs, and nothing brings it back.)

So the body runs once per successful chord, whichever worker finishes the last
header task and whenever. Chain steps are sent with ``once`` too, so a step
redelivered after its success does not run the rest of its chain twice.

A header task that *fails* stores FAILURE with :class:`~polyq.exceptions.ChordError`
under every id of the body (so ``chord(...).get()`` raises at once), marks the
chord failed (a later count reaching the size does not fire), and sends the
body's ``link_error`` errbacks with deterministic ids and ``once`` (a second
failing member sends them again; the claim drops the copies). Errbacks receive
the id of the chord's result (whose stored exception names the failed member).

Messages stay plain for ordinary tasks: the worker's hooks return at once when a
message has no ``options``.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from polyq import states
from polyq.exceptions import ChordError
from polyq.message import TaskMessage, decode, new_id
from polyq.result import AsyncResult, GroupResult, decode_record, encode_record, meta_key

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.task import Task
    from polyq.transport import Delivery

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "claim_once",
    "from_dict",
    "group",
    "maybe_signature",
    "on_failure",
    "on_failure_outside_task",
    "on_success",
    "register_builtin_tasks",
    "signature",
    "xmap",
    "xstarmap",
]

logger = logging.getLogger("polyq.canvas")

CHORD_PREFIX = "polyq-chord-"
CHORD_MEMBERS_PREFIX = "polyq-chord-members-"
CHORD_FIRED_PREFIX = "polyq-chord-fired-"
CHORD_FAILED_PREFIX = "polyq-chord-failed-"
ONCE_PREFIX = "polyq-once-"

#: Message options the canvas owns (everything else is a sending option).
_CANVAS_KEYS = ("chain", "chord", "once")
#: Options that belong to the first step of a chain only.
_FIRST_ONLY = frozenset(
    {
        "task_id",
        "countdown",
        "eta",
        "parent_id",
        "root_id",
        "group_id",
        "group_index",
        "group_size",
        "once",
    }
)
_GROUP_KEYS = ("group_id", "group_index", "group_size")
#: Namespace for errback ids derived from a chord id.
_ERRBACK_NS = uuid.UUID("4f6a1c52-7d7e-4d8e-9a51-6b1f3f0c2a10")

_KINDS: dict[str, type[Signature]] = {}


def _plain(value: Any) -> Any:
    """A deep copy with every mapping a plain ``dict`` (what goes on the wire)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def from_dict(value: dict[str, Any], app: Polyq | None = None) -> Signature:
    """Rebuild a signature (of the right kind) from its dict, e.g. out of a message.

    Always returns a new object (a deep copy); frozen ids are kept.
    """
    kind = value.get("subtask_type")
    cls = _KINDS.get(kind) if kind else None
    if app is None and isinstance(value, Signature):
        app = value._app
    if cls is None:
        sig = Signature.__new__(Signature)
        dict.__init__(sig, _plain(value))
        sig._app = app
        sig.setdefault("options", {})
        sig.setdefault("args", [])
        sig.setdefault("kwargs", {})
        return sig
    return cls._rebuild(_plain(value), app)


def maybe_signature(value: Any, app: Polyq | None = None) -> Signature | None:
    """A signature from a dict (as received in a message) or a task; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return _to_sig(value, app)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """Build a signature from a task name, a task, or a signature dict."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, dict):
        return from_dict(varies, kwargs.get("app"))
    return Signature(varies, *args, **kwargs)


def _to_sig(value: Any, app: Polyq | None) -> Signature:
    from polyq.task import Task

    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return from_dict(value, app)
    if isinstance(value, Task):
        return value.s()
    raise TypeError(f"expected a signature, a task or a signature dict, not {value!r}")


def _expand(sig: Signature) -> Signature:
    # chunks stand for a group; expanding early lets ids be frozen like any group's.
    return sig.group() if isinstance(sig, chunks) else sig


def _items(tasks: tuple[Any, ...]) -> list[Any]:
    # chain(a, b) and chain([a, b]) (or any iterable of signatures) are the same.
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
        return list(tasks[0])
    return list(tasks)


def _set_root_parent(result: Any, parent: Any) -> None:
    # The first result of a step (a chord's header, or the step itself) hangs off
    # the previous step, so ``parent`` links walk the whole workflow.
    node = result
    seen = 0
    while getattr(node, "parent", None) is not None and seen < 10000:
        node = node.parent
        seen += 1
    node.parent = parent


class Signature(dict[str, Any]):
    """A task call described as data: ``add.s(2, 2)``, ``signature('tasks.add', (2, 2))``.

    Partial: arguments given when it is applied are *prepended* (a chain passes
    the previous result this way) unless the signature is immutable
    (``add.si(2, 2)``); keyword arguments are merged; ``.set(**options)`` sets
    sending options (``queue``, ``countdown``, ``priority``...).
    """

    #: ``subtask_type`` of the class (``None`` for a task call).
    kind: ClassVar[str | None] = None

    def __init__(
        self,
        task: str | dict[str, Any] | Task,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: Polyq | None = None,
        **extra_options: Any,
    ) -> None:
        if isinstance(task, dict):
            super().__init__(_plain(dict(task)))
        else:
            name = task if isinstance(task, str) else task.name
            if app is None and not isinstance(task, str):
                app = task.app
            opts = dict(options or {})
            opts.update(extra_options)
            immutable = bool(opts.pop("immutable", immutable))
            super().__init__(
                task=name,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options=opts,
                immutable=immutable,
                subtask_type=subtask_type,
            )
        self._app = app

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = cls.__new__(cls)
        dict.__init__(sig, data)
        sig._app = app
        return sig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    # -- reading ---------------------------------------------------------------

    @property
    def app(self) -> Polyq:
        """The app used to send this signature (the current app if none was given)."""
        from polyq.app import default_app

        return self._app or default_app()

    @property
    def name(self) -> str:
        """The task name."""
        return str(self["task"])

    task = name

    @property
    def type(self) -> Task:
        """The registered task this signature calls."""
        return self.app.tasks[self.name]

    @property
    def args(self) -> list[Any]:
        """Positional arguments."""
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments."""
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        """Sending options (``queue``, ``countdown``, ``link``...), the live dict."""
        return cast(dict[str, Any], self["options"])

    @property
    def immutable(self) -> bool:
        """Whether a parent's result is ignored."""
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        """The task id, once frozen."""
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id else None

    # -- building --------------------------------------------------------------

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        """A deep copy with ``args`` prepended (unless immutable), ``kwargs`` and options merged."""
        sig = from_dict(self, self._app)
        sig._partial(args, kwargs)
        sig["options"].update(opts)
        return sig

    def _partial(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        if self.immutable:
            return
        if args:
            self["args"] = list(args) + list(self["args"])
        if kwargs:
            self["kwargs"] = {**self["kwargs"], **kwargs}

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set sending options in place (``queue=``, ``countdown=``, ...); returns self."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with this task's result when it succeeds; returns the callback."""
        sig = _to_sig(callback, self._app)
        self["options"].setdefault("link", []).append(sig)
        return sig

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` with this task's id when it fails; returns the errback."""
        sig = _to_sig(errback, self._app)
        self["options"].setdefault("link_error", []).append(sig)
        return sig

    on_error = link_error

    def freeze(self, _id: str | None = None) -> Any:
        """Assign the task id now (idempotent) and return the result handle."""
        opts = self["options"]
        if _id:
            opts["task_id"] = _id
        task_id = opts.setdefault("task_id", new_id())
        return AsyncResult(task_id, app=self.app, task_name=self.name)

    def _final(self) -> list[Signature]:
        """The task signatures whose results are this signature's result."""
        return [self]

    def _all(self) -> Iterator[Signature]:
        """Every task signature inside (for marking what will never run)."""
        yield self

    # -- sending ---------------------------------------------------------------

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the task, with ``args`` prepended and ``options`` merged."""
        sig = self.clone(args, kwargs)
        opts = {**sig["options"], **options}
        app = self.app
        if app.conf.task_always_eager:
            return sig.apply(**{k: v for k, v in opts.items() if k not in _CANVAS_KEYS})
        return _send(app, sig, opts)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run here and now, as a worker would (an ``EagerResult``)."""
        sig = self.clone(args, kwargs)
        opts = {k: v for k, v in {**sig["options"], **options}.items() if k not in _CANVAS_KEYS}
        return self.app.tasks[sig.name].apply(sig["args"], sig["kwargs"], **opts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function directly, in this process."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[sig.name](*sig["args"], **sig["kwargs"])

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(self, other, app=self._app)

    def __ror__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(other, self, app=self._app)

    def __reduce__(self) -> Any:
        return (from_dict, (_plain(self),))

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        return from_dict(self, self._app)

    def __repr__(self) -> str:
        args = ", ".join(
            [repr(a) for a in self["args"]] + [f"{k}={v!r}" for k, v in self["kwargs"].items()]
        )
        return f"{self.name}({args}){'!' if self.immutable else ''}"


def _send(app: Polyq, sig: Signature, opts: dict[str, Any]) -> AsyncResult:
    """Publish one task call; canvas keys go into the message's ``options``."""
    canvas = dict(opts.pop("options", None) or {})
    for key in _CANVAS_KEYS:
        value = opts.pop(key, None)
        if value:
            canvas[key] = _plain(value)
    for key in ("link", "link_error"):
        if opts.get(key):
            value = opts[key]
            opts[key] = [
                _plain(_to_sig(v, app)) for v in (value if isinstance(value, list) else [value])
            ]
    task = app.tasks.get(sig.name)
    if task is not None:
        return task.apply_async(sig["args"], sig["kwargs"], options=canvas or None, **opts)
    return app.send_task(sig.name, sig["args"], sig["kwargs"], options=canvas or None, **opts)


def _spread(options: dict[str, Any], into: Signature) -> None:
    # Options given to a whole chain (queue, priority...) reach each of its
    # steps; a step's own options win.
    for key, value in options.items():
        if key not in _FIRST_ONLY and key not in ("link", "link_error"):
            into["options"].setdefault(key, value)


#: Options a group or chord passes to each member as they are (lineage, the claim).
_DIRECT = ("parent_id", "root_id", "once")


def _share(options: dict[str, Any], members: list[Signature]) -> dict[str, Any]:
    """Give a group's options to its members (a member's own win); return the
    options every member is sent with as they are."""
    skip = {"task_id", "link", "link_error", *_GROUP_KEYS, *_DIRECT}
    for member in members:
        for key, value in options.items():
            if key not in skip:
                member["options"].setdefault(key, value)
    return {k: options[k] for k in _DIRECT if k in options}


def _apply_step(
    sig: Signature, args: Sequence[Any], rest: list[Signature], opts: dict[str, Any]
) -> Any:
    """Send ``sig`` (with ``args`` prepended) so that ``rest`` follows it, as a chain."""
    if isinstance(sig, chunks):
        sig = sig.group()
    if isinstance(sig, group | chord):
        # Their own group id is frozen in their options; the caller's is not theirs.
        opts = {k: v for k, v in opts.items() if k not in _GROUP_KEYS}
    if isinstance(sig, group):
        if rest:
            body = rest[0] if len(rest) == 1 else chain(*rest, app=sig._app)
            return chord(sig, body, app=sig._app).apply_async(args, **opts)
        return sig.apply_async(args, **opts)
    if isinstance(sig, chord):
        if rest:
            sig = chord(sig.header, chain(sig.body, *rest, app=sig._app), app=sig._app)
        return sig.apply_async(args, **opts)
    if isinstance(sig, chain):
        return chain(*sig.tasks, *rest, app=sig._app).apply_async(args, **opts)
    if rest:
        opts = {**opts, "chain": [_plain(s) for s in reversed(rest)]}
    return sig.apply_async(args, **opts)


class chain(Signature):
    """Run tasks one after another, each receiving the previous one's result.

    ``chain(a.s(), b.s())`` or ``a.s() | b.s()``. ``.get()`` on its result waits
    for the last step; ``.parent`` walks back to the first.
    """

    kind = "chain"

    def __init__(self, *tasks: Any, app: Polyq | None = None, **options: Any) -> None:
        flat: list[Signature] = []
        for t in _items(tasks):
            sig = _expand(_to_sig(t, app))
            if isinstance(sig, chain):
                flat.extend(sig.tasks)
            else:
                flat.append(sig)
        super().__init__(
            "polyq.chain",
            options=options,
            subtask_type="chain",
            app=app or next((s._app for s in flat if s._app), None),
        )
        self["tasks"] = flat

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = super()._rebuild(data, app)
        sig["tasks"] = [from_dict(t, app) for t in data.get("tasks") or ()]
        return sig

    @property
    def tasks(self) -> list[Signature]:
        """The steps, in order."""
        return cast(list[Signature], self["tasks"])

    def _partial(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        if self.tasks:
            self.tasks[0]._partial(args, kwargs)

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with the last step's result."""
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` when any step fails."""
        sig = _to_sig(errback, self._app)
        for t in self.tasks:
            t.link_error(sig)
        return sig

    on_error = link_error

    def freeze(self, _id: str | None = None) -> Any:
        """Assign every step's id; return the last step's result (parents linked)."""
        prev: Any = None
        for index, t in enumerate(self.tasks):
            result = t.freeze(_id if index == len(self.tasks) - 1 else None)
            if prev is not None:
                _set_root_parent(result, prev)
            prev = result
        return prev

    def _final(self) -> list[Signature]:
        return self.tasks[-1]._final()

    def _all(self) -> Iterator[Signature]:
        for t in self.tasks:
            yield from t._all()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the first step; the rest travel with it and follow its result."""
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        c = cast(chain, self.clone(args, kwargs))
        opts = {**c["options"], **options}
        for callback in _as_list(opts.pop("link", None)):
            c.link(callback)
        for errback in _as_list(opts.pop("link_error", None)):
            c.link_error(errback)
        result = c.freeze(opts.pop("task_id", None))
        for t in c.tasks:
            _spread(opts, t)
        first = {k: v for k, v in opts.items() if k in _FIRST_ONLY}
        _apply_step(c.tasks[0], (), c.tasks[1:], first)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every step here, in order; stops at the first failure (returned)."""
        c = cast(chain, self.clone(args, kwargs))
        result: Any = None
        value: Any = None
        for index, t in enumerate(c.tasks):
            step = t.apply((value,) if index else (), **options)
            if result is not None:
                _set_root_parent(step, result)
            result = step
            ok, value = _eager_value(step)
            if not ok:
                return step
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other, app=self._app)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


def _eager_value(result: Any) -> tuple[bool, Any]:
    try:
        return True, result.get(propagate=True)
    except Exception:
        return False, None


class group(Signature):
    """Run tasks in parallel; a :class:`~polyq.result.GroupResult` collects their
    results in order. Arguments given when applied go to every member."""

    kind = "group"

    def __init__(self, *tasks: Any, app: Polyq | None = None, **options: Any) -> None:
        sigs = [_expand(_to_sig(t, app)) for t in _items(tasks)]
        super().__init__(
            "polyq.group",
            options=options,
            subtask_type="group",
            app=app or next((s._app for s in sigs if s._app), None),
        )
        self["tasks"] = sigs

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = super()._rebuild(data, app)
        sig["tasks"] = [from_dict(t, app) for t in data.get("tasks") or ()]
        return sig

    @property
    def tasks(self) -> list[Signature]:
        """The members."""
        return cast(list[Signature], self["tasks"])

    @property
    def id(self) -> str | None:
        """The group id, once frozen."""
        group_id = self["options"].get("group_id")
        return str(group_id) if group_id else None

    def _partial(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        for t in self.tasks:
            t._partial(args, kwargs)

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with each member's result (use a chord for all at once)."""
        sig = _to_sig(callback, self._app)
        for t in self.tasks:
            t.link(sig)
        return sig

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` when any member fails."""
        sig = _to_sig(errback, self._app)
        for t in self.tasks:
            t.link_error(sig)
        return sig

    on_error = link_error

    def freeze(self, _id: str | None = None) -> GroupResult:
        """Assign the group id and every member's id; return the ``GroupResult``."""
        if _id:
            self["options"]["group_id"] = _id
        group_id = self["options"].setdefault("group_id", new_id())
        return GroupResult(group_id, [t.freeze() for t in self.tasks], app=self.app)

    def _final(self) -> list[Signature]:
        return [f for t in self.tasks for f in t._final()]

    def _all(self) -> Iterator[Signature]:
        for t in self.tasks:
            yield from t._all()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send every member at once; return their ``GroupResult`` (saved)."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        g = cast(group, self.clone(args, kwargs))
        opts = {**g["options"], **options}
        for callback in _as_list(opts.pop("link", None)):
            g.link(callback)
        for errback in _as_list(opts.pop("link_error", None)):
            g.link_error(errback)
        result = g.freeze(opts.pop("group_id", None))
        direct = _share(opts, g.tasks)
        result.save()
        size = len(g.tasks)
        for index, t in enumerate(g.tasks):
            member_opts = dict(direct)
            if not isinstance(t, group | chord | chunks):
                member_opts.update(group_id=result.id, group_index=index, group_size=size)
            _apply_step(t, (), [], member_opts)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Run every member here, one after another."""
        g = cast(group, self.clone(args, kwargs))
        group_id = g["options"].get("group_id") or new_id()
        opts = {k: v for k, v in options.items() if k not in _GROUP_KEYS}
        return GroupResult(group_id, [t.apply(**opts) for t in g.tasks], app=self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(self, other, app=self._app)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"


def _flatten_header(header: group) -> list[Signature]:
    members: list[Signature] = []
    for t in header.tasks:
        if isinstance(t, chunks):
            t = t.group()
        if isinstance(t, group):
            members.extend(_flatten_header(t))
        else:
            members.append(t)
    return members


class chord(Signature):
    """A group (the header) whose results, in order, are passed as one list to a
    callback (the body) once every header task has succeeded.

    ``chord([add.s(i, i) for i in range(10)])(tsum.s())`` or
    ``chord(header, body).apply_async()``. The result is the body's; its
    ``parent`` is the header's ``GroupResult``.
    """

    kind = "chord"

    def __init__(
        self, header: Any, body: Any = None, app: Polyq | None = None, **options: Any
    ) -> None:
        head = header if isinstance(header, group) else group(header, app=app)
        super().__init__(
            "polyq.chord",
            options=options,
            subtask_type="chord",
            app=app or head._app,
        )
        self["header"] = head
        self["body"] = _expand(_to_sig(body, app)) if body is not None else None

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = super()._rebuild(data, app)
        sig["header"] = from_dict(data["header"], app)
        sig["body"] = from_dict(data["body"], app) if data.get("body") else None
        return sig

    @property
    def header(self) -> group:
        """The tasks run in parallel."""
        return cast(group, self["header"])

    @property
    def body(self) -> Signature:
        """The callback."""
        body = self["body"]
        if body is None:
            raise ValueError("this chord has no body: call chord(header)(callback)")
        return cast(Signature, body)

    @property
    def id(self) -> str | None:
        """The id of the chord's result (the body's), once frozen."""
        return self.body.id if self["body"] is not None else None

    def _partial(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        self.header._partial(args, kwargs)

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with the body's result."""
        return self.body.link(callback)

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` when a header task or the body fails."""
        return self.body.link_error(errback)

    on_error = link_error

    def freeze(self, _id: str | None = None) -> Any:
        """Assign every id; return the body's result (its parent is the header's)."""
        header_result = self.header.freeze()
        body_result = self.body.freeze(_id)
        _set_root_parent(body_result, header_result)
        return body_result

    def _final(self) -> list[Signature]:
        return self.body._final()

    def _all(self) -> Iterator[Signature]:
        yield from self.header._all()
        yield from self.body._all()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        body: Any = None,
        **options: Any,
    ) -> Any:
        """Store the chord's record and send the header tasks."""
        if body is not None:
            return chord(self.header, body, app=self._app, **self["options"]).apply_async(
                args, kwargs, **options
            )
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        c = cast(chord, self.clone(args, kwargs))
        opts = {**c["options"], **options}
        for key in ("link", "link_error"):
            for cb in _as_list(opts.pop(key, None)):
                getattr(c.body, key)(cb)
        result = c.freeze(opts.pop("task_id", None))
        for key in _GROUP_KEYS:
            opts.pop(key, None)
        app = self.app
        group_id = str(c.header.id)
        members = _flatten_header(c.header)
        header_result = GroupResult(group_id, [m.freeze() for m in members], app=app)
        if not members:
            c.body.apply_async(([],), **{k: v for k, v in opts.items() if k == "once"})
            return result
        for m in members:
            finals = m._final()
            if len(finals) != 1:
                raise ValueError(
                    f"chord header member {m!r} ends in a group; put that group in the "
                    "header itself, or end the member with a task"
                )
        record = {"body": _plain(c.body), "results": [r.id for r in header_result.results]}
        app.backend.set(
            CHORD_PREFIX + group_id,
            encode_record(record, app.conf.task_serializer),
            ttl=app.result_ttl,
        )
        header_result.save()
        direct = _share(opts, members)
        size = len(members)
        marker = {"id": group_id, "size": size}
        for index, m in enumerate(members):
            final = m._final()[0]
            final["options"]["chord"] = marker
            # The chord reads every header result: they must be stored.
            final["options"]["ignore_result"] = False
            member_opts = dict(direct)
            if not isinstance(m, chord):
                member_opts.update(group_id=group_id, group_index=index, group_size=size)
            _apply_step(m, (), [], member_opts)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        body: Any = None,
        **options: Any,
    ) -> Any:
        """Run the header here, then the body with its results (or fail it)."""
        from polyq.execution import EagerResult

        c = cast(chord, self.clone(args, kwargs))
        if body is not None:
            c["body"] = _to_sig(body, self._app)
        header_result = c.header.apply(**options)
        try:
            values = header_result.get(propagate=True)
        except Exception as exc:
            body_id = c.body.freeze().id
            error = ChordError(f"a header task of chord {c.header.id} raised {exc!r}")
            for errback in _as_list(c.body["options"].get("link_error")):
                _to_sig(errback, self._app).apply((body_id,))
            failed = EagerResult(self.app, body_id, states.FAILURE, error, None)
            failed.parent = header_result  # type: ignore[assignment]
            return failed
        result = c.body.apply((values,), **options)
        _set_root_parent(result, header_result)
        return result

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """``chord(header)(callback)``: send it with this body."""
        return self.apply_async((), body=body, **options)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self['body']!r})"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


class xmap(Signature):
    """``[task(item) for item in it]`` as one task (``polyq.map``), like Celery's ``map``."""

    def __init__(self, task: Any, it: Iterable[Any], app: Polyq | None = None) -> None:
        sig = _to_sig(task, app)
        super().__init__("polyq.map", (_plain(sig), list(it)), app=app or sig._app)


class xstarmap(Signature):
    """``[task(*item) for item in it]`` as one task (``polyq.starmap``)."""

    def __init__(self, task: Any, it: Iterable[Any], app: Polyq | None = None) -> None:
        sig = _to_sig(task, app)
        super().__init__("polyq.starmap", (_plain(sig), [list(i) for i in it]), app=app or sig._app)


def _chunked(items: list[Any], n: int) -> Iterator[list[Any]]:
    source = iter(items)
    while True:
        part = list(itertools.islice(source, n))
        if not part:
            return
        yield part


class chunks(Signature):
    """Split ``it`` (argument tuples) into parts of ``n``, each run as one
    ``starmap`` task, in parallel: ``chunks(add.s(), zip(a, b), 10)``.

    Its result is a ``GroupResult`` whose ``get()`` is a list of lists.
    """

    kind = "chunks"

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: Polyq | None = None) -> None:
        if int(n) < 1:
            raise ValueError(f"chunks needs a chunk size of at least 1, not {n!r}")
        sig = _to_sig(task, app)
        super().__init__(
            "polyq.chunks",
            kwargs={"task": _plain(sig), "it": [list(i) for i in it], "n": int(n)},
            subtask_type="chunks",
            app=app or sig._app,
        )

    def group(self) -> group:
        """The group of ``starmap`` tasks this stands for."""
        kw = self["kwargs"]
        task = from_dict(kw["task"], self._app)
        parts = [xstarmap(task, part, app=self._app) for part in _chunked(kw["it"], kw["n"])]
        return group(parts, app=self._app, **self["options"])

    def _final(self) -> list[Signature]:
        return self.group()._final()

    def _all(self) -> Iterator[Signature]:
        return iter(())

    def freeze(self, _id: str | None = None) -> Any:
        """Not meaningful until expanded: freeze ``.group()`` instead."""
        raise TypeError("freeze chunks(...).group() instead; chunks is expanded when applied")

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the parts as a group."""
        return self.group().apply_async(args, kwargs, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run the parts here."""
        return self.group().apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async``."""
        return self.apply_async(args, kwargs)


def register_builtin_tasks(app: Polyq) -> None:
    """Register ``polyq.map`` and ``polyq.starmap`` on ``app`` (called when it is created)."""

    def map_task(task: dict[str, Any], it: list[Any]) -> list[Any]:
        fun = from_dict(task, app).type
        return [fun(item) for item in it]

    def starmap_task(task: dict[str, Any], it: list[Any]) -> list[Any]:
        fun = from_dict(task, app).type
        return [fun(*item) for item in it]

    app._task_from_function(map_task, name="polyq.map")
    app._task_from_function(starmap_task, name="polyq.starmap")


# -- the worker's side ----------------------------------------------------------


def claim_once(app: Polyq, message: TaskMessage) -> bool:
    """Whether a message sent with ``once`` may run: the first published copy of a
    task id claims it; a redelivery of that same message (same message id) or a
    ``retry()`` of it runs again, any other copy does not."""
    backend = app.backend
    key = ONCE_PREFIX + message.id
    mine = message.message_id.encode()
    for _ in range(3):
        if backend.set_if_absent(key, mine, app.result_ttl):
            return True
        current = backend.get(key)
        if current is not None:
            return current == mine or message.retries > 0
        # The claim expired between the two calls: try again.
    return True


def on_success(app: Polyq, task: Task, message: TaskMessage, retval: Any) -> None:
    """After a success (result stored): send ``link`` callbacks, the chain's next
    step, and count the task in its chord."""
    opts = message.options
    if not opts:
        return
    lineage: dict[str, Any] = {"parent_id": message.id, "root_id": message.root_id}
    for callback in _as_list(opts.get("link")):
        from_dict(callback, app).apply_async((retval,), **lineage)
    remaining = list(opts.get("chain") or ())
    if remaining:
        nxt = from_dict(remaining.pop(), app)
        rest = [from_dict(r, app) for r in reversed(remaining)]
        _apply_step(nxt, (retval,), rest, {**lineage, "once": True})
    info = opts.get("chord")
    if info:
        _chord_member_done(app, message, info)


def on_failure(app: Polyq, task: Task | None, message: TaskMessage, exc: BaseException) -> None:
    """After a failure (stored): send ``link_error`` errbacks with the task id, fail
    what follows in the chain, and fail the chord the task belongs to."""
    opts = message.options
    if not opts:
        return
    lineage: dict[str, Any] = {"parent_id": message.id, "root_id": message.root_id}
    for errback in _as_list(opts.get("link_error")):
        from_dict(errback, app).apply_async((message.id,), **lineage)
    for step in opts.get("chain") or ():
        for sig in from_dict(step, app)._all():
            info = sig["options"].get("chord")
            if info:
                _chord_failed(app, info, message.id, exc)
            elif sig.id:
                _store_failure(app, sig.id, exc, cause=message.id)
    info = opts.get("chord")
    if info:
        _chord_failed(app, info, message.id, exc)


def on_failure_outside_task(app: Polyq, delivery: Delivery, exc: BaseException) -> None:
    """For the worker, when it ends a task without the task's own failure path
    running (hard time limit, process lost for good, dead-lettered after too many
    deliveries, revoked or expired): fail what follows it in its chain and the
    chord it belongs to, so nothing waits for it forever. Cheap for plain tasks
    (one header check); never raises."""
    if delivery.headers.get("polyq") is None:
        return
    try:
        message = decode(delivery, app.accept)
        if message.options:
            on_failure(app, None, message, exc)
    except Exception:
        logger.exception("could not fail the workflow of task %s", delivery.headers.get("id"))


def _store_failure(app: Polyq, task_id: str, exc: BaseException, cause: str) -> None:
    from polyq.execution import store_state

    store_state(app, task_id, states.FAILURE, exc=exc, extra={"cause": cause})


def _load_chord(app: Polyq, group_id: str) -> dict[str, Any] | None:
    data = app.backend.get(CHORD_PREFIX + group_id)
    if data is None:
        return None
    return decode_record(data, app.accept)


def _chord_member_done(app: Polyq, message: TaskMessage, info: dict[str, Any]) -> None:
    backend = app.backend
    group_id, size = str(info["id"]), int(info["size"])
    count = backend.add_to_set(CHORD_MEMBERS_PREFIX + group_id, message.id, app.result_ttl)
    if count < size:
        return
    fired = backend.get_many([CHORD_FIRED_PREFIX + group_id, CHORD_FAILED_PREFIX + group_id])
    if fired:
        return
    record = _load_chord(app, group_id)
    if record is None:
        logger.error(
            "chord %s completed but its record is gone (expired? result_expires=%s): "
            "its callback cannot be sent",
            group_id,
            app.conf.result_expires,
        )
        return
    ids: list[str] = record["results"]
    found = backend.get_many([meta_key(i) for i in ids])
    values = []
    for task_id in ids:
        data = found.get(meta_key(task_id))
        state = decode_record(data, app.result_accept) if data is not None else None
        if state is None or state.get("status") != states.SUCCESS:
            status = state.get("status") if state else "missing"
            _chord_failed(
                app, info, task_id, ChordError(f"header task {task_id} result is {status}")
            )
            return
        values.append(state.get("result"))
    body = from_dict(record["body"], app)
    # Publish first, then mark: a crash in between republishes (on redelivery of
    # this message), and the ``once`` claim drops the second copy.
    body.apply_async((values,), once=True, parent_id=message.id, root_id=message.root_id)
    backend.set(CHORD_FIRED_PREFIX + group_id, b"1", ttl=app.result_ttl)


def _chord_failed(app: Polyq, info: dict[str, Any], member_id: str, exc: BaseException) -> None:
    backend = app.backend
    group_id = str(info["id"])
    if backend.get(CHORD_FIRED_PREFIX + group_id) is not None:
        return
    record = _load_chord(app, group_id)
    if record is None:
        logger.error("chord %s failed but its record is gone: nothing to mark", group_id)
        return
    body = from_dict(record["body"], app)
    error = exc if isinstance(exc, ChordError) else None
    if error is None:
        error = ChordError(
            f"chord {group_id}: header task {member_id} raised {type(exc).__name__}: {exc}"
        )
    targets = list(body._all())
    for sig in targets:
        if sig.id:
            _store_failure(app, sig.id, error, cause=member_id)
    backend.set(CHORD_FAILED_PREFIX + group_id, member_id.encode(), ttl=app.result_ttl)
    result_id = body._final()[0].id if body._final() else None
    errbacks = _as_list(targets[0]["options"].get("link_error")) if targets else []
    for index, errback in enumerate(errbacks):
        errback_id = str(uuid.uuid5(_ERRBACK_NS, f"{group_id}:{index}"))
        from_dict(errback, app).apply_async(
            (result_id,), task_id=errback_id, once=True, parent_id=member_id
        )
